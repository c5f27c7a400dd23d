"""The engine's "mil" task: loss, metrics (classification's, per bag), bag inference with instance scores,
model arguments without spatial dims, and gradient accumulation (train.accumulate) with its collate errors."""

from __future__ import annotations

import pytest
import torch

from medssm.engine.config import load_config
from medssm.engine.inference import infer, infer_bag
from medssm.engine.metrics import Metrics, selection_metric
from medssm.engine.setup import make_loss, model_arguments
from medssm.engine.trainer import micro_batches
from medssm.models import create_model


def test_mil_uses_cross_entropy_and_classification_metrics():
    assert isinstance(make_loss("auto", "mil"), torch.nn.CrossEntropyLoss)
    assert selection_metric("auto", "mil") == "auc"
    prob = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    target = torch.tensor([0, 1, 1, 1])
    mil, classification = Metrics("mil", 2), Metrics("classification", 2)
    for metrics in (mil, classification):
        metrics.update(prob[:2], target[:2])
        metrics.update(prob[2:], target[2:])
    assert mil.compute() == classification.compute()
    assert mil.compute()["accuracy"] == 0.75 and mil.compute()["balanced_accuracy"] == pytest.approx(5 / 6)


def test_bag_inference_returns_probabilities_and_instance_scores():
    model = create_model("abmil", in_channels=8).train()
    bag = torch.randn(1, 6, 8)
    prob = infer(model, bag, "mil")
    prob2, scores = infer_bag(model, bag, instance_scores=True)
    torch.testing.assert_close(prob, prob2)
    assert prob.shape == (1, 2) and scores.shape == (1, 6) and model.training  # mode restored
    torch.testing.assert_close(prob.sum(1), torch.ones(1))
    with pytest.raises(ValueError, match="a bag of instances has no grid"):
        infer(model, bag, "mil", tta_flips=True)


def test_model_arguments_of_a_bag_dataset_have_no_spatial_dims():
    config = load_config(None, ["train.max_steps=1", "model.args={encoder: colon_cnn}"])
    dataset = type("Bags", (), {"task": "mil", "in_channels": 3, "num_classes": 2, "spatial_dims": None})()
    assert model_arguments(config, dataset) == {"in_channels": 3, "out_channels": 2, "encoder": "colon_cnn"}


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    torch.manual_seed(0)
    items = [{"image": torch.randn(4), "label": torch.tensor(i % 2)} for i in range(6)]
    parts = micro_batches(items, parts=3)
    assert len(parts) == 3 and parts[0]["image"].shape == (2, 4)
    model = torch.nn.Linear(4, 2)
    loss_fn = torch.nn.CrossEntropyLoss()
    full = micro_batches(items)[0]
    loss_fn(model(full["image"]), full["label"]).backward()
    expected = model.weight.grad.clone()
    model.zero_grad()
    for part in parts:
        (loss_fn(model(part["image"]), part["label"]) / len(parts)).backward()
    torch.testing.assert_close(model.weight.grad, expected)
    with pytest.raises(ValueError, match="cannot be split into train.accumulate=4 equal micro-batches"):
        micro_batches(items, parts=4)
    bags = [{"image": torch.randn(n, 4), "label": torch.tensor(0)} for n in (3, 5)]
    with pytest.raises(ValueError, match="bags of different sizes need train.batch_size=1"):
        micro_batches(bags)


def test_accumulate_and_optimizer_are_validated():
    assert load_config(None, ["train.max_steps=1", "train.accumulate=4", "train.optimizer=adam"]).train.accumulate == 4
    with pytest.raises(ValueError, match="train.accumulate must be >= 1"):
        load_config(None, ["train.max_steps=1", "train.accumulate=0"])
    with pytest.raises(ValueError, match="train.optimizer must be one of"):
        load_config(None, ["train.max_steps=1", "train.optimizer=sgd"])

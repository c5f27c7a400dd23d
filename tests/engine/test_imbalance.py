"""Class imbalance (issue 26, item 11): class weights from the training split, their errors, the weighted
losses against their definitions, the balanced sampler's class frequencies, exact resumption with both, and
balanced accuracy in the validation line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceLoss
from safetensors.torch import load_file

from medssm.engine.config import config_from_dict
from medssm.engine.distributed import DistInfo, ShardedBatchSampler
from medssm.engine.imbalance import BalancedBatchSampler, auto_class_weights
from medssm.engine.setup import make_loss
from medssm.engine.trainer import train, validation_line


def _toy(tmp_path: Path, train_counts=(18, 6), val_counts=(4, 4), side: int = 16) -> Path:
    """A MedMNIST-style npz whose classes are imbalanced in train (18:6) and balanced in val."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, counts in (("train", train_counts), ("val", val_counts), ("test", val_counts)):
        labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
        images = (rng.random((len(labels), side, side)) * 80 + labels[:, None, None] * 100).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(tmp_path / "toy.npz", **arrays)
    return tmp_path / "toy.npz"


def _raw(path: Path, **train) -> dict:
    return {"model": {"name": "mini_mamba_classifier", "args": {"features": [8, 16], "mamba_stages": 1}},
            "data": {"name": "medmnist", "args": {"path": str(path), "num_classes": 2}},
            "train": {"max_steps": 2, "batch_size": 4, "val_every": 2, **train}}


def test_auto_weights_come_from_the_training_split_and_are_saved(tmp_path):
    run = tmp_path / "run"
    train(config_from_dict(_raw(_toy(tmp_path), class_weights="auto")), run, progress=False)
    saved = json.loads((run / "class_weights.json").read_text())
    # inverse frequencies 1/18 and 1/6 of the TRAINING split (val is 4:4), normalised to mean 1
    assert saved["train_counts"] == [18, 6] and saved["weights"] == pytest.approx([0.5, 1.5])
    meta = json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert meta["class_weights"] == pytest.approx([0.5, 1.5])
    assert auto_class_weights(torch.tensor([0, 0, 0, 2]), "classification", 3)[0] == pytest.approx([0.5, 0, 1.5])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert auto_class_weights(positives, "multilabel", 2) == (pytest.approx([1 / 3, 3.0]), [3, 1])


def test_a_wrong_number_of_weights_and_bad_values_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"train.class_weights has 3 values but the model has 2 classes"):
        train(config_from_dict(_raw(_toy(tmp_path), class_weights=[1, 2, 3])), tmp_path / "r", progress=False)
    for bad in ("inverse", [-1.0, 1.0], [0, 0], []):
        with pytest.raises(ValueError, match="train.class_weights must be"):
            config_from_dict({"train": {"max_steps": 1, "class_weights": bad}})
    with pytest.raises(ValueError, match="train.sampler must be one of"):
        config_from_dict({"train": {"max_steps": 1, "sampler": "weighted"}})
    assert config_from_dict({"train": {"max_steps": 1, "class_weights": [1, 2.5]}}).train.class_weights == [1.0, 2.5]
    seg = {"model": {"name": "mini_mamba_unet", "args": {"features": [8, 16], "mamba_stages": 1}},
           "data": {"name": "synthetic", "args": {"num_samples": 8, "spatial_size": [16, 16]}},
           "train": {"max_steps": 1, "batch_size": 4, "class_weights": "auto"}}
    with pytest.raises(ValueError, match="class_weights: auto is computed for classification and multilabel"):
        train(config_from_dict(seg), tmp_path / "seg", progress=False)
    seg["train"]["sampler"], seg["train"]["class_weights"] = "balanced", None
    with pytest.raises(ValueError, match="balanced draws classes equally for classification, not for segmentation"):
        train(config_from_dict(seg), tmp_path / "seg2", progress=False)


def test_weighted_losses_match_their_definitions():
    torch.manual_seed(0)
    weights = [0.25, 1.0, 3.0]
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 0, 1])
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights))
    torch.testing.assert_close(make_loss("auto", "classification", weights)(logits, target), expected)
    assert not torch.allclose(make_loss("auto", "classification")(logits, target), expected)
    # dice_ce: the cross-entropy part is weighted, the Dice part is not
    seg, mask = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    dice = DiceLoss(to_onehot_y=True, softmax=True)(seg, mask)
    torch.testing.assert_close(make_loss("auto", "segmentation", weights)(seg, mask),
                               dice + F.cross_entropy(seg, mask[:, 0], weight=torch.tensor(weights)))
    multi, labels = torch.randn(5, 2), torch.randint(0, 2, (5, 2)).float()
    torch.testing.assert_close(make_loss("auto", "multilabel", [2.0, 0.5])(multi, labels),
                               F.binary_cross_entropy_with_logits(multi, labels, pos_weight=torch.tensor([2.0, 0.5])))
    with pytest.raises(ValueError, match="class_weights weigh the ce, bce and dice_ce losses, not l1"):
        make_loss("l1", "restoration", [1.0])


def test_the_balanced_sampler_draws_classes_equally_and_resumes_mid_epoch():
    labels = torch.tensor([0] * 90 + [1] * 10)  # 10 % minority

    def minority_share(sampler) -> float:
        drawn = []
        for epoch in range(20):
            sampler.set_epoch(epoch)
            drawn += [i for batch in sampler for i in batch]
        return float((labels[drawn] == 1).float().mean())

    # 2000 draws: the standard error of a share of 0.5 is 0.011, so 0.05 is 4.5 of them; the plain
    # sampler's share is exactly 0.1
    assert abs(minority_share(BalancedBatchSampler(labels, 10, DistInfo(), seed=3)) - 0.5) < 0.05
    assert abs(minority_share(ShardedBatchSampler(100, 10, DistInfo(), seed=3)) - 0.5) > 0.35
    sampler = BalancedBatchSampler(labels, 10, DistInfo(), seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=6)
    assert list(sampler) == full[6:] and len(full) == 10
    sampler.set_epoch(5)
    assert list(sampler) != full
    halves = [list(BalancedBatchSampler(labels, 10, DistInfo(rank, 2), seed=3)) for rank in (0, 1)]
    assert [a + b for a, b in zip(*halves, strict=True)] == [batch[0::2] + batch[1::2] for batch in
                                                            BalancedBatchSampler(labels, 10, DistInfo(), seed=3)]


def test_sigkill_then_resume_with_class_weights_and_the_balanced_sampler_is_exact(tmp_path):
    # 24 training samples / batch 4 = 6 steps per epoch; checkpoints every 4 steps fall mid-epoch
    raw = _raw(_toy(tmp_path, side=40), class_weights="auto", sampler="balanced", max_steps=10, val_every=10,
               checkpoint_every=4)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "medssm", "train", "--config", str(config), "--no-progress", "--out"]
    subprocess.run([*cli, str(tmp_path / "full")], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last" / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and json.loads(last.read_text()).get("step", 0) >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-m", "medssm", "train", "--out", str(killed), "--resume", "--no-progress"],
                   check=True, env=env, capture_output=True)
    runs = (tmp_path / "full", killed)
    assert (killed / "class_weights.json").read_text() == (tmp_path / "full" / "class_weights.json").read_text()
    weights = [load_file(run / "checkpoints" / "last" / "model.safetensors") for run in runs]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0)


def test_the_validation_line_shows_balanced_accuracy_beside_accuracy(tmp_path, caplog, capsys):
    line = validation_line(20, {"accuracy": 0.75, "balanced_accuracy": 0.5, "auc": 0.6, "recall_1": 0.0}, "auc",
                           {"best": 0.6, "best_step": 20})
    assert line == "step 20 val: accuracy 0.7500 balanced_accuracy 0.5000 auc 0.6000 | best auc 0.6000 at step 20"
    with caplog.at_level(logging.INFO, logger="medssm.engine.trainer"):
        train(config_from_dict(_raw(_toy(tmp_path))), tmp_path / "quiet", progress=False)
    assert "step 2 val: accuracy " in caplog.text and " balanced_accuracy " in caplog.text
    train(config_from_dict(_raw(_toy(tmp_path))), tmp_path / "bar", progress=True)
    assert "step 2 val: accuracy " in capsys.readouterr().err

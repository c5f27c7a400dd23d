"""Several tasks at once through the trainer (issue 24): extra heads train with the main one from the CLI,
their targets standardised on the training split only and saved in the checkpoint, missing targets masked,
gradients reaching every head, and an interrupted run resuming to the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medssm.cli import main
from medssm.data.ehr import PhysioNet2012
from medssm.data.ehr.synthetic import write_synthetic_challenge
from medssm.engine import trainer
from medssm.engine.checkpoint import load_model, load_weights, read_meta
from medssm.engine.config import load_config
from medssm.engine.multitask import MultiTask, regression_errors, setup_multitask
from medssm.models import create_model

FAST = ["model.args.d_model=16", "model.args.depth=1", "data.args.max_length=48", "train.batch_size=8",
        "train.warmup_steps=0", "model.args.tasks={los: 1, saps: 1, sofa: 1}"]


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    return write_synthetic_challenge(tmp_path_factory.mktemp("p12"), stays=24, events=30)


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "physionet2012", "--out", str(out), "--no-progress", "--device", "cpu",
            f"data.args.root={root}", *FAST, *extra]


def test_cli_trains_the_extra_heads_and_saves_the_training_split_standardisation(challenge, tmp_path):
    run = tmp_path / "run"
    # No weight decay: only the loss's gradients can move a head.
    steps = ["train.max_steps=2", "train.val_every=2", "train.checkpoint_every=2", "train.weight_decay=0"]
    assert main(_args(challenge, run, *steps, "train.task_weights={los: 0.5}")) == 0
    meta = read_meta(run / "checkpoints" / "best")
    train_set = PhysioNet2012(challenge, "train", max_length=48)
    table = train_set.target_table()
    assert len(set(train_set.cases) & set(PhysioNet2012(challenge, "val", max_length=48).cases)) == 0
    for name, column in (("los", 1), ("saps", 2), ("sofa", 3)):
        known = table[:, column][~torch.isnan(table[:, column])].double()
        assert meta["multitask"]["scales"][name] == pytest.approx([known.mean().item(), known.std().item()])
    assert meta["multitask"]["weights"] == {"los": 0.5, "saps": 1.0, "sofa": 1.0}
    model, _ = load_model(run / "checkpoints" / "best")
    assert set(model.task_heads) == {"los", "saps", "sofa"}
    torch.manual_seed(0)  # train.seed: the weights before training
    initial = create_model("ehr_mamba", **meta["model_args"])
    trained = load_weights(run / "checkpoints" / "best")
    for name in ("los", "saps", "sofa"):  # the optimizer moved every extra head
        key = f"task_heads.{name}.out_proj.weight"
        assert not torch.equal(trained[key], initial.state_dict()[key])
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert {"auc", "auprc", "brier"} <= set(metrics)
    multitask, val = MultiTask.from_dict(meta["multitask"]), PhysioNet2012(challenge, "val", max_length=48)
    errors = regression_errors(model, val, multitask, batch_size=3)
    items = [val[i] for i in range(len(val))]
    with torch.no_grad():
        outputs = model(torch.stack([item["image"] for item in items]), all_heads=True)
    targets = torch.stack([item["targets"] for item in items])
    for name, column in multitask.columns.items():  # by hand, in days and points
        mean, std = multitask.scales[name]
        known = ~torch.isnan(targets[:, column])
        expected = (outputs[name][known, 0] * std + mean - targets[known, column]).abs().mean()
        assert errors[f"mae_{name}"] == pytest.approx(expected.item(), rel=1e-5)
    # medssm evaluate reports the same errors beside the main task's metrics
    assert main(["evaluate", "--checkpoint", str(run), "--split", "val", "--out", str(tmp_path / "eval_val")]) == 0
    reported = json.loads((tmp_path / "eval_val" / "metrics.json").read_text())["metrics"]
    for name in ("los", "saps", "sofa"):
        assert reported[f"mae_{name}"] == pytest.approx(errors[f"mae_{name}"], rel=1e-5)


def test_the_loss_is_the_main_loss_plus_weighted_masked_head_terms_and_reaches_every_head():
    torch.manual_seed(0)
    model = create_model("ehr_mamba", d_model=16, depth=1, tasks={"los": 1, "sofa": 1, "saps": 3}).train()
    tokens = torch.zeros(4, 12, 4)
    tokens[:, :, 0] = torch.randint(1, 400, (4, 12))
    tokens[:, :, 2] = torch.arange(12.0)
    table = torch.tensor([[0, 3.0, 1, 5], [1, float("nan"), 2, 9], [0, 10.0, float("nan"), 1], [1, 7.0, 0, 4]])
    multitask = MultiTask({"los": 1, "saps": 2, "sofa": 3}, {"los": (5.0, 2.0), "sofa": (4.0, 3.0)},
                          {"los": 0.5, "saps": 1.0, "sofa": 2.0})
    outputs = model(tokens, all_heads=True)
    loss = multitask.loss({k: v for k, v in outputs.items() if k != "main"}, table)
    los = F.mse_loss(outputs["los"][[0, 2, 3], 0], (torch.tensor([3.0, 10.0, 7.0]) - 5) / 2)  # NaN row left out
    saps = F.cross_entropy(outputs["saps"][[0, 1, 3]], torch.tensor([1, 2, 0]))
    sofa = F.mse_loss(outputs["sofa"][:, 0], (table[:, 3] - 4) / 3)
    torch.testing.assert_close(loss, 0.5 * los + saps + 2 * sofa)
    loss.backward()
    for name in ("los", "saps", "sofa"):
        grad = model.task_heads[name].out_proj.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.head.out_proj.weight.grad is None  # the main head is the trainer's own loss term


def test_a_head_whose_targets_are_all_missing_adds_nothing():
    model = create_model("ehr_mamba", d_model=16, depth=1, tasks={"los": 1})
    tokens = torch.ones(2, 8, 4)
    multitask = MultiTask({"los": 1}, {"los": (5.0, 2.0)}, {"los": 1.0})
    loss = multitask.loss({"los": model(tokens, all_heads=True)["los"]}, torch.full((2, 4), float("nan")))
    assert loss.item() == 0 and torch.isfinite(loss)


def test_bad_switches_name_the_key(challenge):
    train_set = PhysioNet2012(challenge, "train", max_length=48)
    with pytest.raises(ValueError, match="not targets of the data set.*'los'"):
        setup_multitask({"mortality": 1}, None, train_set)
    with pytest.raises(ValueError, match="train.task_weights names \\['saps'\\]"):
        setup_multitask({"los": 1}, {"saps": 1.0}, train_set)
    with pytest.raises(ValueError, match="model.args.tasks sets no extra heads"):
        setup_multitask(None, {"los": 1.0}, train_set)
    with pytest.raises(ValueError, match="needs a data set whose items carry 'targets'"):
        setup_multitask({"los": 1}, None, object())
    with pytest.raises(ValueError, match="train.task_weights\\['los'\\] must be a non-negative number"):
        load_config(overrides=["train.max_steps=1", "train.task_weights={los: -1}"])
    assert setup_multitask(None, None, train_set) is None


def test_an_interrupted_run_resumes_with_its_saved_standardisation(challenge, tmp_path, monkeypatch):
    steps = ["train.max_steps=4", "train.val_every=4", "train.checkpoint_every=2"]
    assert main(_args(challenge, tmp_path / "full", *steps)) == 0
    step = trainer._train_step

    def stop_at_3(run, batch):
        if run.counters["step"] == 2:
            raise KeyboardInterrupt("killed")
        return step(run, batch)

    monkeypatch.setattr(trainer, "_train_step", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        main(_args(challenge, tmp_path / "killed", *steps))
    monkeypatch.setattr(trainer, "_train_step", step)
    setup = trainer.setup_multitask

    def other_scales(*args):  # a refit would differ: the resumed run must use the checkpoint's
        fitted = setup(*args)
        return MultiTask(fitted.columns, {k: (m + 1.0, s * 2) for k, (m, s) in fitted.scales.items()}, fitted.weights)

    monkeypatch.setattr(trainer, "setup_multitask", other_scales)
    assert main(["train", "--out", str(tmp_path / "killed"), "--resume", "--no-progress", "--device", "cpu"]) == 0
    full, resumed = (load_weights(tmp_path / r / "checkpoints" / "last") for r in ("full", "killed"))
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    assert (read_meta(tmp_path / "killed" / "checkpoints" / "last")["multitask"]
            == read_meta(tmp_path / "full" / "checkpoints" / "last")["multitask"])

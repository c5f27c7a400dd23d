from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from medssm.engine.checkpoint import (
    capture_train_state,
    load_model,
    read_meta,
    restore_train_state,
    save_checkpoint,
)
from medssm.models import create_model

ARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [8, 16]}


def _trained(steps=3):
    torch.manual_seed(0)
    model = create_model("mini_mamba_unet", **ARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(steps):
        loss = model(torch.randn(2, 1, 16, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _one_more_step(model, opt, sched):
    x = torch.randn(2, 1, 16, 16)  # consumes the global RNG: checks its restoration
    noise = np.random.rand() + random.random()
    loss = model(x).square().mean() * (1 + 0 * noise)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return noise, [p.detach().clone() for p in model.parameters()]


def test_resume_replays_the_next_step_exactly(tmp_path):
    model, opt, sched = _trained()
    meta = {"model": "mini_mamba_unet", "model_args": ARGS, "step": 3}
    save_checkpoint(tmp_path / "last", model, meta, capture_train_state(opt, sched, None, {"step": 3}))
    expected_noise, expected = _one_more_step(model, opt, sched)

    np.random.seed(123)
    random.seed(5)
    torch.manual_seed(99)
    restored, loaded_meta = load_model(tmp_path / "last")
    restored.train()
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    counters = restore_train_state(tmp_path / "last", opt2, sched2, None)
    assert counters == {"step": 3} and loaded_meta["step"] == 3
    assert sched2.get_last_lr() == sched.get_last_lr() or sched2.last_epoch == 3
    noise, params = _one_more_step(restored, opt2, sched2)
    assert noise == expected_noise
    for a, b in zip(params, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    model, opt, sched = _trained(1)
    folder = save_checkpoint(tmp_path / "c", model, {"model": "mini_mamba_unet", "model_args": ARGS},
                             capture_train_state(opt, sched, None, {}))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "model.safetensors",
                                                        "train_state.json", "train_state.safetensors"]
    json.loads((folder / "train_state.json").read_text())
    assert read_meta(folder / "model.safetensors")["model"] == "mini_mamba_unet"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (tmp_path / ".c.partial-dead").mkdir()  # as a process killed mid-write leaves it
    save_checkpoint(tmp_path / "c", model, {"model": "mini_mamba_unet", "model_args": ARGS})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_replacing_a_checkpoint_and_the_instant_between_renames(tmp_path):
    model, _, _ = _trained(1)
    meta = {"model": "mini_mamba_unet", "model_args": ARGS}
    save_checkpoint(tmp_path / "last", model, {**meta, "step": 1})
    save_checkpoint(tmp_path / "last", model, {**meta, "step": 2})
    assert read_meta(tmp_path / "last")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    (tmp_path / "last").rename(tmp_path / "last.old")  # killed between the two renames
    assert read_meta(tmp_path / "last")["step"] == 2


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_meta(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.json").write_text("{}")
    with pytest.raises(ValueError, match="incomplete: model.safetensors is missing"):
        load_model(tmp_path / "half")
    model, _, _ = _trained(0)
    folder = save_checkpoint(tmp_path / "c", model, {"model": "mini_mamba_unet", "model_args": ARGS})
    with pytest.raises(ValueError, match="holds no training state"):
        restore_train_state(folder, None, None, None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read weights"):
        load_model(folder)
    (folder / "checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_meta(folder)


def test_checkpoint_folders_follow_the_umask(tmp_path):
    # issue 26, defect 7: checkpoint folders came out drwx------ (mkdtemp's mode) whatever the umask
    import os

    model, _, _ = _trained(1)
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "c", model, {"model": "mini_mamba_unet", "model_args": ARGS})
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644

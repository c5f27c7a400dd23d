"""Checkpoints: safetensors weights + JSON, written as a whole folder that appears in one rename.

A checkpoint is a folder::

    model.safetensors        the network's state dict
    checkpoint.json          model name and arguments, task, step, metrics, the resolved config, ...
    train_state.safetensors  (resumable checkpoints) optimizer tensors and RNG states
    train_state.json         (resumable checkpoints) optimizer param groups, scheduler, counters, RNG states

Nothing is ever unpickled: tensors go through safetensors and everything else through JSON, so a checkpoint
from an untrusted source cannot run code. The folder is written under a temporary name and swapped in with
renames, so a process killed at any moment leaves either the old or the new checkpoint (``_resolve`` also
accepts the ``.old`` copy that exists for an instant during the swap).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..data.io import read_json
from ..models import create_model
from .files import current_umask, temporary_dir_beside

MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights, ``meta`` (JSON-serialisable) and optionally ``train_state`` (see
    :func:`capture_train_state`) as the checkpoint folder ``directory``, replacing it atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.partial-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temporary_dir_beside(directory)
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / MODEL_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if train_state is not None:
            tensors, plain = train_state["tensors"], train_state["plain"]
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / STATE_FILE)
            (tmp / STATE_META_FILE).write_text(json.dumps(plain, default=_json_default))
        for written in tmp.iterdir():  # safetensors writes its files 0600: give them the umask's mode
            os.chmod(written, 0o666 & ~current_umask())
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")


def _resolve(path: str | Path) -> Path:
    """The checkpoint folder for ``path``: the folder itself, or the folder of a file inside it."""
    path = Path(path)
    if path.is_file() and path.name in (MODEL_FILE, META_FILE):
        path = path.parent
    if not path.exists():
        old = path.with_name(path.name + ".old")
        if old.is_dir():  # killed between the two renames of save_checkpoint
            return old
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    for name in (MODEL_FILE, META_FILE):
        if not (path / name).is_file():
            raise ValueError(f"checkpoint {path} is incomplete: {name} is missing")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    folder = _resolve(path)
    return read_json(folder / META_FILE)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    folder = _resolve(path)
    try:
        return load_file(folder / MODEL_FILE)
    except Exception as error:  # safetensors raises its own error types for truncated headers
        raise ValueError(f"{folder / MODEL_FILE}: cannot read weights ({error})") from error


def load_model(path: str | Path, device: str | torch.device = "cpu", **overrides) -> tuple[nn.Module, dict]:
    """Rebuild the registered model named in the checkpoint and load its weights (strict).

    ``overrides`` replace constructor arguments that do not change the weights (e.g. ``scan_backend``).
    Returns (model in eval mode on ``device``, checkpoint meta).
    """
    meta = read_meta(path)
    if "model" not in meta or "model_args" not in meta:
        raise ValueError(f"checkpoint {path}: {META_FILE} lacks 'model'/'model_args'")
    model = create_model(meta["model"], **{**meta["model_args"], **overrides})
    model.load_state_dict(load_weights(path), strict=True)
    return model.to(device).eval(), meta


# --- the resumable training state -------------------------------------------------------------------------

def capture_train_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        counters: dict[str, Any]) -> dict[str, Any]:
    """Optimizer, scheduler, grad scaler, counters and every RNG state, split into tensors and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    opt = optimizer.state_dict()
    opt_state: dict[str, dict[str, Any]] = {}
    for pid, entries in opt["state"].items():
        opt_state[str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value
                opt_state[str(pid)][key] = "__tensor__"
            else:
                opt_state[str(pid)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_state = random.getstate()
    plain = {
        "optimizer": {"state": opt_state, "param_groups": opt["param_groups"]},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "counters": counters,
        "rng": {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": [py_state[0], list(py_state[1]), py_state[2]]},
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return {"tensors": tensors, "plain": plain}


def restore_train_state(path: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                        scaler: Any) -> dict[str, Any]:
    """Load what :func:`capture_train_state` saved into the given objects; returns the counters."""
    folder = _resolve(path)
    if not (folder / STATE_FILE).is_file() or not (folder / STATE_META_FILE).is_file():
        raise ValueError(f"checkpoint {folder} holds no training state (it is a weights-only checkpoint)")
    tensors = load_file(folder / STATE_FILE)
    plain = json.loads((folder / STATE_META_FILE).read_text())
    state = {}
    for pid, entries in plain["optimizer"]["state"].items():
        state[int(pid)] = {k: tensors[f"optimizer.{pid}.{k}"] if v == "__tensor__" else v for k, v in entries.items()}
    optimizer.load_state_dict({"state": state, "param_groups": plain["optimizer"]["param_groups"]})
    if scheduler is not None and plain["scheduler"] is not None:
        scheduler.load_state_dict(plain["scheduler"])
    if scaler is not None and plain["scaler"] is not None:
        scaler.load_state_dict(plain["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, cached = plain["rng"]["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = plain["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return plain["counters"]

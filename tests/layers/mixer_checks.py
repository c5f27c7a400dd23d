"""Checks shared by the Mamba and Mamba2 mixer tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def check_state_dict_round_trip(make: Callable[[], torch.nn.Module], params: dict[str, tuple[int, ...]],
                                x: torch.Tensor, tmp_path: Path) -> None:
    """A state dict with mamba_ssm's keys and shapes loads strictly, survives safetensors unchanged, and a
    fresh model loaded from the file computes the same output on x."""
    g = torch.Generator().manual_seed(1)
    foreign = {k: torch.randn(shape, generator=g) for k, shape in params.items()}
    model = make()
    model.load_state_dict(foreign, strict=True)
    path = tmp_path / "mixer.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_file(str(path))
    assert loaded.keys() == foreign.keys()
    for k in foreign:
        torch.testing.assert_close(loaded[k], foreign[k], rtol=0, atol=0)
    fresh = make()
    fresh.load_state_dict(loaded, strict=True)
    torch.testing.assert_close(fresh(x), model(x))


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Move the parameters off their structured init so that decoding bugs cannot hide."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def decode(model: torch.nn.Module, x: torch.Tensor, prefill: int) -> torch.Tensor:
    """Outputs of a prefill over x[:, :prefill] then one step per remaining token: (batch, L, d_model)."""
    conv_state, ssm_state = model.allocate_inference_cache(x.shape[0])
    outs = [model(x[:, :prefill], cache=(conv_state, ssm_state))] if prefill else []
    outs += [model.step(x[:, t:t + 1], conv_state, ssm_state) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


def check_autocast_keeps_scan_fp32(module, model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype,
                                   monkeypatch) -> None:
    """Under CPU autocast to ``dtype``, the ``selective_scan`` that ``module`` calls receives fp32 u and delta,
    and the output stays finite and close to the fp32 forward."""
    seen = []
    original = module.selective_scan

    def spy(u, delta, *args, **kwargs):
        seen.append((u.dtype, delta.dtype))
        return original(u, delta, *args, **kwargs)

    monkeypatch.setattr(module, "selective_scan", spy)
    expected = model(x)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert seen[-1] == (torch.float32, torch.float32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)

"""Every registered model is exercised the same way: forward, backward, odd sizes, each supported
spatial_dims, a safetensors state-dict round trip, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from medssm.models import count_flops, count_parameters, create_model, get_entry, list_models, register_model
from medssm.ops import count_scan_flops, selective_scan

CASES = [(name, dims) for name in list_models() for dims in get_entry(name).spatial_dims]


def _odd_size(dims: int) -> tuple[int, ...]:
    return {1: (37,), 2: (19, 23), 3: (9, 11, 7)}[dims]


def _expected_shape(name: str, batch: int, size: tuple[int, ...], out_channels: int) -> tuple[int, ...]:
    task = get_entry(name).task
    return (batch, out_channels) if task == "classification" else (batch, out_channels, *size)


@pytest.mark.parametrize("name,dims", CASES)
def test_forward_backward_on_odd_sizes(name, dims):
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims, in_channels=2, out_channels=2 if "restorer" in name else 3)
    out_channels = 2 if "restorer" in name else 3
    x = torch.randn(2, 2, *_odd_size(dims), requires_grad=True)
    y = model(x)
    assert y.shape == _expected_shape(name, 2, _odd_size(dims), out_channels)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name,dims", CASES)
def test_state_dict_round_trip_through_safetensors(name, dims, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims).eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.manual_seed(1)
    other = create_model(name, spatial_dims=dims).eval()
    other.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    x = torch.randn(1, 1, *get_entry(name).input_size[dims])
    torch.testing.assert_close(other(x), model(x))


@pytest.mark.parametrize("name", list_models())
def test_parameter_and_flop_counts(name):
    entry = get_entry(name)
    dims = entry.spatial_dims[-1]
    model = create_model(name, spatial_dims=dims)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 10_000
    x = torch.randn(1, 1, *entry.input_size[dims])
    with count_scan_flops() as scans:
        model.eval()(x)
    flops = count_flops(model, x)
    assert scans.flops > 0 and flops > scans.flops


def test_scan_flop_count_formula():
    u = torch.randn(2, 4, 10)
    with count_scan_flops() as scans:
        selective_scan(u, u.abs(), -torch.ones(4, 8), torch.randn(2, 8, 10), torch.randn(2, 8, 10), D=torch.ones(4),
                       z=u)
    assert scans.flops == 9 * 2 * 4 * 10 * 8 + 2 * 2 * 4 * 10


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(TypeError, match="model 'mini_mamba_unet'.*'widht'"):
        create_model("mini_mamba_unet", widht=3)
    with pytest.raises(ValueError, match="residual_output needs"):
        create_model("mini_mamba_restorer", in_channels=1, out_channels=3)
    with pytest.raises(ValueError, match="task must be one of"):
        register_model("detection", (2,), {2: (8, 8)})

    def mini_mamba_unet(spatial_dims=2, in_channels=1, out_channels=2):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="'mini_mamba_unet' is registered twice"):
        register_model("segmentation", (2,), {2: (8, 8)})(mini_mamba_unet)


def test_list_models_filters():
    assert list_models("mini_*", task="classification") == ["mini_mamba_classifier"]
    assert "mini_mamba_unet" in list_models(task="segmentation")
    assert list_models("no_such_*") == []

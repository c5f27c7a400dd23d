"""The multi-route vision Mamba mixer: shapes for any size, every scan backend, every route, gradients."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import check_autocast_keeps_scan_fp32

from medssm.layers.vision_mamba import MultiRouteMamba
from medssm.scans import list_routes

SHAPES = {1: [(1,), (13,)], 2: [(1, 1), (5, 7), (8, 8)], 3: [(1, 1, 1), (3, 5, 2)]}


def _supports(route: str, spatial_dims: int) -> bool:
    try:
        MultiRouteMamba(spatial_dims, 8, d_state=4, route=route)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("route", list_routes())
def test_any_size_forward_backward(route, spatial_dims):
    if not _supports(route, spatial_dims):
        pytest.skip(f"{route} has no {spatial_dims}-d form")
    torch.manual_seed(0)
    mixer = MultiRouteMamba(spatial_dims, 8, d_state=4, route=route)
    for shape in SHAPES[spatial_dims]:
        x = torch.randn(2, 8, *shape, requires_grad=True)
        y = mixer(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_same_output_through_every_scan_backend(backend):
    torch.manual_seed(0)
    ref = MultiRouteMamba(2, 12, d_state=4, route="cross", merge="weighted", scan_backend="reference")
    fast = MultiRouteMamba(2, 12, d_state=4, route="cross", merge="weighted", scan_backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 12, 5, 7)
    outs = []
    for mixer in (ref, fast):
        xi = x.clone().requires_grad_()
        out = mixer(xi)
        out.square().mean().backward()
        outs.append((out, xi.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=2e-3, atol=2e-3)


def test_cross_route_keeps_ss2d_parameter_names_and_shapes():
    mixer = MultiRouteMamba(2, 16, d_state=8, route="cross")  # d_inner 32, dt_rank 1, K 4
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes["x_proj_weight"] == (4, 1 + 2 * 8, 32)
    assert shapes["dt_projs_weight"] == (4, 32, 1)
    assert shapes["dt_projs_bias"] == (4, 32)
    assert shapes["A_logs"] == (4 * 32, 8)
    assert shapes["Ds"] == (4 * 32,)
    assert shapes["in_proj.weight"] == (64, 16) and shapes["out_proj.weight"] == (16, 32)
    assert "out_norm.weight" in shapes


def test_routes_differ_so_the_route_matters():
    torch.manual_seed(0)
    a = MultiRouteMamba(2, 8, d_state=4, route="raster")
    b = MultiRouteMamba(2, 8, d_state=4, route="bidirectional")
    x = torch.randn(1, 8, 4, 5)
    common = {k: v for k, v in a.state_dict().items() if b.state_dict()[k].shape == v.shape}
    b.load_state_dict(common, strict=False)
    assert not torch.allclose(a(x), b(x))


def test_bad_input_is_rejected():
    mixer = MultiRouteMamba(2, 8, d_state=4)
    with pytest.raises(ValueError, match="spatial"):
        mixer(torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match="spatial_dims"):
        MultiRouteMamba(4, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_the_scan_in_fp32(dtype, monkeypatch):
    import medssm.layers.vision_mamba as module

    torch.manual_seed(0)
    mixer = MultiRouteMamba(2, 16, d_state=8)
    check_autocast_keeps_scan_fp32(module, mixer, torch.randn(2, 16, 7, 9), dtype, monkeypatch)


def test_a_route_instance_is_used_as_given():
    from medssm.scans import get_route

    torch.manual_seed(0)
    by_name = MultiRouteMamba(2, 16, d_state=8, route="local", route_kwargs={"window": 3})
    torch.manual_seed(0)
    route = get_route("local", window=3)
    by_instance = MultiRouteMamba(2, 16, d_state=8, route=route)
    assert by_instance.route is route and by_instance.num_routes == by_name.num_routes
    x = torch.randn(1, 16, 7, 5)
    torch.testing.assert_close(by_instance(x), by_name(x))
    with pytest.raises(ValueError, match="route_kwargs apply to a route given by name"):
        MultiRouteMamba(2, 16, route=route, route_kwargs={"window": 3})
    with pytest.raises(ValueError, match="route must be a route name or a ScanRoute"):
        MultiRouteMamba(2, 16, route=3)

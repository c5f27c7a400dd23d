"""LightM-UNet: shapes at odd sizes, the released architecture's parameter count (against the paper's claim),
ssm=False, every scan route, and its distinctive blocks (RVM layers on route orders, ResMambaBlock, widths)."""

from __future__ import annotations

import math

import pytest
import torch

from medssm.layers import Mamba, ResidualVisionMamba
from medssm.layers.token_routes import mix_along_route
from medssm.models import count_parameters, create_model
from medssm.models.lightm_unet import LightMUNet, ResMambaBlock, RoutedResidualVisionMamba
from medssm.scans import get_route, list_routes

TINY = {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1), "d_state": 4}
SCAN_PARAMETERS = ("x_proj", "dt_proj", "A_log", "D")


def _mamba_count(d: int, d_state: int = 16, d_conv: int = 4) -> int:
    """mamba_ssm's Mamba(d) (expand 2, dt_rank ceil(d / 16)): in_proj, conv1d, x_proj, dt_proj, A_log, D,
    out_proj."""
    inner, rank = 2 * d, math.ceil(d / 16)
    return (d * 2 * inner + inner * d_conv + inner + inner * (rank + 2 * d_state) + rank * inner + inner
            + inner * d_state + inner + inner * d)


def _rvm_count(d_in: int, d_out: int) -> int:
    return _mamba_count(d_in) + 2 * d_in + d_in * d_out + d_out + 1  # + LayerNorm, proj, skip_scale


def _released_count(spatial_dims: int, in_channels: int = 1, out_channels: int = 2) -> int:
    """The released LightMUNet(init_filters=32, blocks (1, 2, 2, 4) / (1, 1, 1)), counted from its parts."""
    k, w = 3**spatial_dims, (32, 64, 128, 256)
    gn = 2  # GroupNorm weight + bias per channel
    total = in_channels * k + in_channels * w[0]  # stem: depthwise + pointwise, no bias
    for i, blocks in enumerate((1, 2, 2, 4)):
        total += (_rvm_count(w[i - 1], w[i]) if i else 0) + blocks * (2 * gn * w[i] + 2 * _rvm_count(w[i], w[i]))
    for i in range(3):  # decoder: 1x1 conv (no bias), one ResUpBlock (2 GN, depthwise-separable conv, skip_scale)
        below, c = w[3 - i], w[2 - i]
        total += below * c + 2 * gn * c + c * k + c * c + 1
    return total + gn * w[0] + 2 * w[0] + w[0] * out_channels + out_channels  # head: GN, dw 1x1 + pw 1x1, biases


@pytest.mark.parametrize("spatial_dims,size", [(2, (9, 13)), (3, (5, 7, 3))])
def test_output_shape_at_odd_sizes(spatial_dims, size):
    model = LightMUNet(spatial_dims, 2, 3, **TINY)
    with torch.no_grad():
        y = model(torch.randn(2, 2, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_parameter_count_is_the_released_architecture_not_the_papers_claim():
    # The paper reports 1.09M parameters for the 2D network and the README "1M", but the released code with the
    # released configuration has ~5.0M (LightM-UNet#30 measures 5.01M): its 21 Mamba mixers alone hold 4.28M.
    # We build the released architecture, so a band around 1M would only pass on a wrong one; instead the
    # count must equal the released model's, derived part by part above, in 2D and 3D.
    for spatial_dims in (2, 3):
        model = create_model("lightm_unet", spatial_dims=spatial_dims)
        total = count_parameters(model)
        mixers = [m for m in model.modules() if isinstance(m, Mamba)]
        in_mixers = sum(count_parameters(m) for m in mixers)
        print(f"lightm_unet {spatial_dims}D: {total:,} parameters ({in_mixers:,} in {len(mixers)} Mamba mixers, "
              f"{total - in_mixers:,} outside); paper: 1.09M (2D), README: 1M")
        assert total == _released_count(spatial_dims)
        assert len(mixers) == 21 and 4.9e6 < total < 5.1e6
    no_ssm = count_parameters(LightMUNet(2, ssm=False))
    print(f"lightm_unet 2D ssm=False: {no_ssm:,} parameters")


def test_no_ssm_only_removes_scan_parameters_and_trains_one_step():
    torch.manual_seed(0)
    with_ssm, model = LightMUNet(2, 1, 2, **TINY), LightMUNet(2, 1, 2, ssm=False, **TINY)
    kept = dict(with_ssm.named_parameters())
    names = dict(model.named_parameters())
    assert all(n in kept and kept[n].shape == p.shape for n, p in names.items())
    assert {n.split(".")[-2 if n.endswith(("weight", "bias")) else -1] for n in set(kept) - set(names)} \
        == set(SCAN_PARAMETERS)
    x, target = torch.randn(2, 1, 12, 10), torch.randint(0, 2, (2, 12, 10))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


ROUTE_CASES = [(r, d) for r in list_routes() for d in (2, 3) if d in get_route(r).spatial_dims]


@pytest.mark.parametrize("route,spatial_dims", ROUTE_CASES)
def test_every_route_builds_and_runs_with_the_same_parameters(route, spatial_dims):
    small = {**TINY, "blocks_down": (1, 1), "blocks_up": (1,)}
    model = LightMUNet(spatial_dims, 1, 2, route=route, **small)
    size = (6, 5) if spatial_dims == 2 else (4, 3, 4)
    with torch.no_grad():
        y = model(torch.randn(1, 1, *size))
    assert y.shape == (1, 2, *size) and torch.isfinite(y).all()
    assert count_parameters(model) == count_parameters(LightMUNet(spatial_dims, 1, 2, **small))


def test_raster_route_is_the_released_rvm_layer_and_the_default():
    torch.manual_seed(0)
    layer = RoutedResidualVisionMamba(2, 8, 12, route="raster", d_state=4)
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(layer(x), ResidualVisionMamba.forward(layer, x), rtol=0, atol=0)
    torch.manual_seed(0)
    default = LightMUNet(2, 1, 2, **TINY)
    torch.manual_seed(0)
    raster = LightMUNet(2, 1, 2, route="raster", **TINY)
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(raster(x), default(x), rtol=0, atol=0)


def test_a_multi_order_route_averages_the_shared_mixer_over_its_orderings():
    torch.manual_seed(0)
    mamba, route = Mamba(4, d_state=4), get_route("bidirectional")
    x = torch.randn(2, 4, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)  # raster (2, 15, 4)
    orders = route.orders((3, 5))
    expected = torch.zeros_like(tokens)
    for order in orders:
        expected[:, order] += mamba(tokens[:, order]) / len(orders)
    got = mix_along_route(mamba, x, route)
    torch.testing.assert_close(got, expected.transpose(1, 2).view_as(x), rtol=1e-5, atol=1e-6)


def test_res_mamba_block_is_norm_act_rvm_twice_plus_identity_and_widths_double():
    block = ResMambaBlock(2, 8, 8, {"route": "raster", "d_state": 4})
    torch.nn.init.zeros_(block.rvm2.proj.weight)
    torch.nn.init.zeros_(block.rvm2.proj.bias)
    x = torch.randn(2, 8, 4, 5)
    torch.testing.assert_close(block(x), x)  # the second RVM's output is zero: only the identity remains
    model = LightMUNet(3, 1, 2, **TINY)
    shapes = []
    for layer in model.down_layers:
        layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.randn(1, 1, 7, 8, 5))
    assert shapes == [(1, 8, 8, 8, 8), (1, 16, 4, 4, 4), (1, 32, 2, 2, 2)]
    assert isinstance(model.down_layers[1][0], RoutedResidualVisionMamba)  # downsampling: RVM, then max-pool
    assert isinstance(model.down_layers[1][1], torch.nn.MaxPool3d)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="spatial_dims 2 and 3"):
        LightMUNet(1)
    with pytest.raises(ValueError, match="blocks_up needs"):
        LightMUNet(2, blocks_down=(1, 2, 2), blocks_up=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown scan route 'nope'"):
        LightMUNet(2, route="nope")
    with pytest.raises(ValueError, match="route 'local' supports spatial_dims"):
        RoutedResidualVisionMamba(1, 8, route="local")

"""U-Mamba (Bot, Enc): shapes at odd sizes, parameter counts against the conv skeleton plus Mamba layers,
ssm=False, every scan route, deep supervision, channel-token switching and the fp32 Mamba layer."""

from __future__ import annotations

import math

import pytest
import torch

from medssm.layers import Mamba
from medssm.layers.token_routes import build_route
from medssm.models import count_parameters, create_model
from medssm.models.umamba import MambaLayer, UMambaBot, UMambaEnc, channel_token_positions, released_blocks
from medssm.scans import get_route, list_routes

TINY = {"features": (8, 16, 32), "d_state": 4}
SCAN_PARAMETERS = {"x_proj", "dt_proj", "A_log", "D"}


def _mamba_layer_count(d: int, d_state: int = 16) -> int:
    """LayerNorm(d) + mamba_ssm's Mamba(d) (expand 2, d_conv 4, dt_rank ceil(d / 16))."""
    inner, rank = 2 * d, math.ceil(d / 16)
    return 2 * d + d * 2 * inner + 5 * inner + inner * (rank + 2 * d_state) + rank * inner + inner * (d_state + 2) \
        + inner * d


@pytest.mark.parametrize("cls", [UMambaBot, UMambaEnc])
@pytest.mark.parametrize("spatial_dims,size", [(2, (9, 13)), (3, (5, 7, 3))])
def test_output_shape_at_odd_sizes(cls, spatial_dims, size):
    model = cls(spatial_dims, 2, 3, **TINY)
    with torch.no_grad():
        y = model(torch.randn(2, 2, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_parameter_counts_are_the_conv_skeleton_plus_the_mamba_layers():
    # The U-Mamba paper reports no parameter count: check that Bot and Enc share the same residual U-Net and
    # differ only by their Mamba layers, each LayerNorm + Mamba(d) of the stage width.
    for spatial_dims in (2, 3):
        bot, enc = create_model("umamba_bot", spatial_dims=spatial_dims), create_model("umamba_enc",
                                                                                       spatial_dims=spatial_dims)
        widths = bot.features
        skeleton = count_parameters(bot) - _mamba_layer_count(widths[-1])
        assert count_parameters(enc) - sum(_mamba_layer_count(w) for w in widths) == skeleton
        print(f"umamba {spatial_dims}D features {widths}: bot {count_parameters(bot):,}, enc "
              f"{count_parameters(enc):,}, conv skeleton {skeleton:,}")
    released = UMambaBot(2, 1, 2, features=(32, 64, 128, 256, 512, 512, 512))  # nnU-Net 2D plans, 7 levels
    print(f"umamba_bot 2D at the released 2D plans' widths: {count_parameters(released):,}")
    assert count_parameters(UMambaBot(2, ssm=False)) < count_parameters(UMambaBot(2))


def test_released_block_rule():
    assert released_blocks(4) == ((2, 2, 1, 1), (2, 2, 1))
    assert released_blocks(7) == ((2, 2, 2, 2, 1, 1, 1), (2, 2, 2, 2, 1, 1))
    model = UMambaBot(2, **TINY)  # 3 levels: blocks_down (2, 2, 1), blocks_up (2, 2)
    assert [len(stage) for stage in model.stages] == [2, 2, 1] and len(model.stem) == 2
    assert [len(level) for level in model.decoder] == [2, 2]


@pytest.mark.parametrize("cls", [UMambaBot, UMambaEnc])
def test_no_ssm_only_removes_scan_parameters_and_trains_one_step(cls):
    torch.manual_seed(0)
    with_ssm, model = cls(2, 1, 2, **TINY), cls(2, 1, 2, ssm=False, **TINY)
    kept, names = dict(with_ssm.named_parameters()), dict(model.named_parameters())
    assert all(n in kept and kept[n].shape == p.shape for n, p in names.items())
    removed = {n.split(".")[-2 if n.endswith(("weight", "bias")) else -1] for n in set(kept) - set(names)}
    assert removed == SCAN_PARAMETERS
    x, target = torch.randn(2, 1, 12, 10), torch.randint(0, 2, (2, 12, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


ROUTE_CASES = [(r, d) for r in list_routes() for d in (2, 3) if d in get_route(r).spatial_dims]


@pytest.mark.parametrize("route,spatial_dims", ROUTE_CASES)
def test_every_route_builds_and_runs_with_the_same_parameters(route, spatial_dims):
    small = {"features": (4, 8), "d_state": 4}
    model = UMambaEnc(spatial_dims, 1, 2, route=route, **small)
    size = (6, 5) if spatial_dims == 2 else (4, 3, 4)
    with torch.no_grad():
        y = model(torch.randn(1, 1, *size))
    assert y.shape == (1, 2, *size) and torch.isfinite(y).all()
    assert count_parameters(model) == count_parameters(UMambaEnc(spatial_dims, 1, 2, **small))


def test_raster_mamba_layer_is_the_released_flatten_layernorm_mamba():
    torch.manual_seed(0)
    layer = MambaLayer(3, 8, build_route("raster", 3), d_state=4)
    x = torch.randn(2, 8, 3, 4, 2)
    tokens = x.flatten(2).transpose(1, 2)
    expected = layer.mamba(layer.norm(tokens)).transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_mamba_layer_runs_in_fp32_under_autocast():
    layer = MambaLayer(2, 8, build_route("raster", 2), d_state=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(1, 8, 4, 4).bfloat16())
    assert y.dtype == torch.float32


def test_deep_supervision_lists_each_decoder_scale_in_training_only():
    torch.manual_seed(0)
    model = UMambaBot(2, 1, 3, deep_supervision=True, **TINY)
    x = torch.randn(2, 1, 13, 10)
    outputs = model.train()(x)
    assert [tuple(y.shape) for y in outputs] == [(2, 3, 13, 10), (2, 3, 7, 5)]
    assert model.eval()(x).shape == (2, 3, 13, 10)
    plain = UMambaBot(2, 1, 3, **TINY)
    assert plain.train()(x).shape == (2, 3, 13, 10)  # without deep supervision: one tensor in training too
    result = plain.load_state_dict(model.state_dict(), strict=False)  # heads keyed by level, as nnU-Net
    assert result.missing_keys == [] and result.unexpected_keys == ["seg_layers.0.weight", "seg_layers.0.bias"]
    torch.testing.assert_close(plain.eval()(x), model(x))


def test_channel_tokens_where_a_stage_has_no_more_positions_than_channels():
    # features (8, 16, 32) at input_size (8, 8): stage positions 64 > 8, 16 <= 16, 4 <= 32.
    assert channel_token_positions((8, 8), (8, 16, 32)) == [None, 16, 4]
    assert channel_token_positions((7, 5), (8, 16, 32)) == [None, 16, 4]  # padded to the total stride, 4
    assert channel_token_positions(None, (8, 16, 32)) == [None, None, None]
    model = UMambaEnc(2, 1, 2, input_size=(8, 8), **TINY)
    layers = model.mamba_layers
    assert [layers[s].channel_tokens for s in "012"] == [None, 16, 4]
    assert [layers[s].norm.normalized_shape[0] for s in "012"] == [8, 16, 4]  # d_model: channels or positions
    assert [layers[s].mamba.d_model for s in "012"] == [8, 16, 4]
    assert model(torch.randn(2, 1, 7, 5)).shape == (2, 2, 7, 5)
    with pytest.raises(ValueError, match="built for 16 positions .*input_size"):
        model(torch.randn(1, 1, 12, 12))
    assert UMambaBot(2, 1, 2, input_size=(8, 8), **TINY).mamba_layers["2"].channel_tokens is None  # Bot never


def test_nearest_upsampling_is_the_current_release():
    transpose, nearest = UMambaBot(2, **TINY), UMambaBot(2, upsample="nearest", **TINY)
    # per level: a 2x2 transposed conv (c_in * c_out * 4 + c_out) becomes a 1x1 conv (c_in * c_out + c_out)
    assert count_parameters(transpose) - count_parameters(nearest) == 3 * (32 * 16 + 16 * 8)
    assert nearest(torch.randn(1, 1, 9, 9)).shape == (1, 2, 9, 9)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="spatial_dims 2 and 3"):
        UMambaBot(1)
    with pytest.raises(ValueError, match="one blocks_down per level"):
        UMambaBot(2, features=(8, 16), blocks_down=(1, 1, 1))
    with pytest.raises(ValueError, match="input_size needs 2 sizes"):
        UMambaEnc(2, input_size=(8, 8, 8))
    with pytest.raises(ValueError, match="upsample"):
        UMambaBot(2, upsample="bilinear")
    assert isinstance(UMambaBot(2, **TINY).mamba_layers["2"].mamba, Mamba)

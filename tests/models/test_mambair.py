"""MambaIR: shapes at odd sizes in 1D/2D/3D, the released layout (names, the paper size's parameter count),
per-channel skip scales, CAB channel attention, the global residual, and ssm=False removing only the scan."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import MultiRouteMamba
from medssm.layers.restoration import CAB, ChannelAttention, ScaledResidualBlock
from medssm.models import count_parameters, create_model
from medssm.models.mambair import MAMBAIR_DENOISE, MAMBAIR_LIGHT

SCAN_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")
SMALL = {"embed_dim": 16, "depths": (1, 2)}


@pytest.mark.parametrize("dims,size", [(1, (29,)), (2, (13, 17)), (3, (5, 6, 7))])
def test_output_is_an_image_of_the_input_shape(dims, size):
    torch.manual_seed(0)
    model = create_model("mambair", spatial_dims=dims, in_channels=3, out_channels=3, **SMALL)
    x = torch.rand(2, 3, *size, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.mean().backward()
    assert x.grad is not None


def test_blocks_have_per_channel_skip_scales_cab_and_the_cross_scan():
    model = create_model("mambair", **SMALL)
    blocks = [m for m in model.modules() if isinstance(m, ScaledResidualBlock)]
    assert len(blocks) == 3
    for block in blocks:
        assert block.skip_scale.shape == block.skip_scale2.shape == (16,)
        assert isinstance(block.conv_blk, CAB) and isinstance(block.conv_blk.cab[3], ChannelAttention)
        assert isinstance(block.self_attention, MultiRouteMamba)
        assert block.self_attention.route.name == "cross" and block.self_attention.num_routes == 4
    mixer = blocks[0].self_attention
    assert mixer.d_inner == int(1.2 * 16)  # expand = MambaIR's mlp_ratio
    snake = create_model("mambair", route="snake", **SMALL)
    assert snake.layers[0].residual_group.blocks[0].self_attention.route.name == "snake"


def test_parameter_names_follow_the_released_code():
    names = set(create_model("mambair", **SMALL).state_dict())
    for key in ["conv_first.weight", "patch_embed.norm.weight", "norm.bias", "conv_after_body.weight",
                "conv_last.weight", "layers.1.conv.weight", "layers.0.residual_group.blocks.0.skip_scale",
                "layers.0.residual_group.blocks.0.skip_scale2", "layers.0.residual_group.blocks.0.ln_1.weight",
                "layers.0.residual_group.blocks.0.self_attention.x_proj_weight",
                "layers.0.residual_group.blocks.0.self_attention.A_logs",
                "layers.0.residual_group.blocks.0.conv_blk.cab.0.weight",
                "layers.0.residual_group.blocks.0.conv_blk.cab.3.attention.1.weight"]:
        assert key in names, key


def test_paper_sizes():
    # The released MambaIR colour-denoising model (embed 180, six groups of six, mlp_ratio 1.2), counted
    # from mambair_arch.py's layer shapes: SS2D 183,168 + CAB 196,986 + norms and scales 1,080 per block,
    # six group convs, conv_first, two norms, conv_after_body and conv_last.
    assert count_parameters(create_model("mambair", in_channels=3, out_channels=3, **MAMBAIR_DENOISE)) == 15_777_507
    assert count_parameters(create_model("mambair", **MAMBAIR_LIGHT)) == 1_308_145


def test_global_residual():
    model = create_model("mambair", **SMALL).eval()
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
    x = torch.rand(1, 1, 9, 10)
    torch.testing.assert_close(model(x), x)


def test_no_ssm_only_removes_the_scan_parameters():
    with_ssm = dict(create_model("mambair", **SMALL).named_parameters())
    without = dict(create_model("mambair", ssm=False, **SMALL).named_parameters())
    assert set(without) < set(with_ssm)
    assert all(without[n].shape == with_ssm[n].shape for n in without)
    removed = set(with_ssm) - set(without)
    assert removed and all(n.rsplit(".", 1)[-1] in SCAN_PARAMETERS for n in removed)
    assert len(removed) == 3 * len(SCAN_PARAMETERS)  # every block's mixer
    assert create_model("mambair", ssm=False, **SMALL)(torch.rand(1, 1, 7, 9)).shape == (1, 1, 7, 9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_channels must equal in_channels=1, got 2"):
        create_model("mambair", out_channels=2)
    with pytest.raises(ValueError, match="depths must be a non-empty list"):
        create_model("mambair", depths=(0,))

"""MaIR: shapes at odd sizes in 2D/3D, nested S-scans with shifted stripes on every second block, sequence
shuffle attention as the merge, the paper size's parameter count, and ssm=False removing only the scan."""

from __future__ import annotations

import pytest
import torch

from medssm.layers.restoration import ScaledResidualBlock, SequenceShuffleAttention
from medssm.models import count_parameters, create_model
from medssm.models.mair import MAIR_DENOISE, MAIR_LIGHT, MaIR

SCAN_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")
SMALL = {"embed_dim": 16, "depths": (3,)}


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, ScaledResidualBlock)]


@pytest.mark.parametrize("dims,size", [(2, (13, 17)), (3, (5, 6, 7))])
def test_output_is_an_image_of_the_input_shape(dims, size):
    torch.manual_seed(0)
    model = create_model("mair", spatial_dims=dims, in_channels=2, out_channels=2, **SMALL)
    x = torch.rand(2, 2, *size, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.mean().backward()
    assert x.grad is not None
    assert all(p.grad is not None for p in model.parameters())


def test_nested_s_routes_alternate_their_stripe_borders_and_merge_by_ssa():
    blocks = _blocks(create_model("mair", scan_width=4, **SMALL))
    routes = [b.self_attention.route for b in blocks]
    assert [r.name for r in routes] == ["nested_s"] * 3
    assert [(r.width, r.shift) for r in routes] == [(4, 0), (4, 2), (4, 0)]
    for block in blocks:
        assert block.self_attention.merge_mode == "ssa"
        assert isinstance(block.self_attention.gating, SequenceShuffleAttention)
        assert block.skip_scale.shape == block.skip_scale2.shape == (16,)
        assert block.conv_blk.fc1.out_channels == 32  # mlp_ratio 2
    assert blocks[0].self_attention.d_inner == int(1.3 * 16)  # ssm_ratio


def test_other_routes():
    cross = _blocks(create_model("mair", route="cross", **SMALL))[1].self_attention
    assert cross.route.name == "cross" and cross.merge_mode == "ssa"
    raster = _blocks(create_model("mair", route="raster", **SMALL))[0].self_attention
    assert raster.merge_mode == "sum" and not hasattr(raster, "gating")  # one route: nothing to attend over


def test_paper_sizes():
    # The released colour-denoising MaIR (embed 180, 6x6 blocks, ssm_ratio 1.3, mlp_ratio 2), counted from
    # mair_arch.py's layer shapes: VMM 203,112 (ShuffleAttn 4,680 of it) + MLP 130,140 + norms and scales
    # 1,080 per block, and the same convs as MambaIR.
    assert count_parameters(create_model("mair", in_channels=3, out_channels=3, **MAIR_DENOISE)) == 14_089_035
    assert count_parameters(create_model("mair", **MAIR_LIGHT)) == 1_347_649


def test_no_ssm_only_removes_the_scan_and_its_attention():
    with_ssm = dict(create_model("mair", **SMALL).named_parameters())
    without = dict(create_model("mair", ssm=False, **SMALL).named_parameters())
    assert set(without) < set(with_ssm) and all(without[n].shape == with_ssm[n].shape for n in without)
    removed = set(with_ssm) - set(without)
    assert all(n.rsplit(".", 1)[-1] in SCAN_PARAMETERS or ".gating.gating." in n for n in removed)
    assert len(removed) == 3 * (len(SCAN_PARAMETERS) + 2)
    assert create_model("mair", ssm=False, **SMALL)(torch.rand(1, 1, 7, 9)).shape == (1, 1, 7, 9)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'mair' supports spatial_dims \(2, 3\), got 1"):
        create_model("mair", spatial_dims=1)
    with pytest.raises(ValueError, match="mair supports spatial_dims 2 and 3"):
        MaIR(spatial_dims=1)
    with pytest.raises(ValueError, match="out_channels must equal in_channels=1, got 3"):
        create_model("mair", out_channels=3)

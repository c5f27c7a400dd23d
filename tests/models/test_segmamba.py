"""SegMamba: shapes at odd sizes (3D and 2D), its parameter count against the released code's, the no-SSM
control, every scan route, and the encoder's structure (GSC once per stage, the stage MLP only on the skip
branch, the padding that keeps the deepest instance norms defined). Tiny widths keep it quick; the
registry-wide checks run the default (paper) widths."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import GSC, VSSBlock
from medssm.models import count_parameters, create_model
from medssm.models.segmamba import SegMamba
from medssm.scans import get_route, list_routes

TINY = dict(features=(4, 8, 8, 8), hidden_size=8, d_state=2)
SCAN_PARAMETERS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")

# The released SegMamba (ge-xing/SegMamba, model_segmamba/segmamba.py; in_chans 4, out_chans 4, the BraTS
# setting), instantiated with a parameter-only stand-in for its bimamba "v3" Mamba: 67,416,196. Our ToM mixer
# differs by design per layer of C channels: one 3x3x3 depthwise conv (2C * 27 + 2C) instead of three width-4
# 1D convs (3 * (2C * 4 + 2C)), +26C, and MultiRouteMamba's out_norm (2 * 2C), +4C: 30C per layer.
SEGMAMBA_RELEASED_PARAMS = 67_416_196
PAPER_FEATURES, PAPER_DEPTHS = (48, 96, 192, 384), (2, 2, 2, 2)


def _tiny(dims: int = 3, **kwargs) -> torch.nn.Module:
    return create_model("segmamba", spatial_dims=dims, in_channels=2, out_channels=3, **{**TINY, **kwargs})


@pytest.mark.parametrize("dims,size", [(3, (9, 11, 7)), (2, (19, 23))])
def test_output_shape_at_odd_sizes(dims, size):
    torch.manual_seed(0)
    y = _tiny(dims)(torch.randn(2, 2, *size))
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()


def test_parameter_count_matches_the_released_model_up_to_the_documented_mixer_difference():
    n = count_parameters(create_model("segmamba", in_channels=4, out_channels=4))
    mixer_difference = sum(30 * c * d for c, d in zip(PAPER_FEATURES, PAPER_DEPTHS, strict=True))
    print(f"segmamba at the paper's widths: {n:,} parameters (released: {SEGMAMBA_RELEASED_PARAMS:,}, "
          f"+{mixer_difference:,} from the mixer)")
    assert n == SEGMAMBA_RELEASED_PARAMS + mixer_difference


def test_no_ssm_removes_only_the_scan_parameters_and_trains():
    torch.manual_seed(0)
    with_ssm, without = _tiny(), _tiny(ssm=False)
    kept = {n for n, _ in with_ssm.named_parameters()}
    names = {n for n, _ in without.named_parameters()}
    assert names < kept and all(n.split(".")[-1] in SCAN_PARAMETERS for n in kept - names)
    x, target = torch.randn(2, 2, 8, 8, 8), torch.randint(0, 3, (2, 8, 8, 8))
    torch.nn.functional.cross_entropy(without(x), target).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in without.parameters())
    torch.optim.SGD(without.parameters(), lr=0.1).step()


@pytest.mark.parametrize("dims", (3, 2))
def test_every_route_builds_and_runs(dims):
    # The route lives in the encoder only: run the encoder (the full model's shapes are checked above).
    size = (32, 16, 16) if dims == 3 else (32, 32)
    for route in [r for r in list_routes() if dims in get_route(r).spatial_dims]:
        torch.manual_seed(0)
        encoder = _tiny(dims, route=route, depths=(1, 1, 1, 1)).vit
        assert {m.op.route.name for m in encoder.modules() if isinstance(m, VSSBlock)} == {route}
        with torch.no_grad():
            outs = encoder(torch.randn(1, 2, *size))
        assert outs[-1].shape[2:] == tuple(n // 16 for n in size), route


def test_encoder_structure():
    model = create_model("segmamba")
    encoder = model.vit
    assert [g.channels for g in encoder.gscs] == list(PAPER_FEATURES)  # one GSC per stage
    assert sum(isinstance(m, GSC) for m in model.modules()) == 4
    blocks = [b for stage in encoder.stages for b in stage]
    assert len(blocks) == 8 and all(b.mlp is None and b.op.route.name == "tri_oriented" for b in blocks)
    assert encoder.downsample_layers[0].kernel_size == (7, 7, 7) and encoder.downsample_layers[0].stride == (2,) * 3
    assert [m.fc1.out_channels for m in encoder.mlps] == [2 * c for c in PAPER_FEATURES]
    assert model.encoder5.layer.conv1.conv.out_channels == 768  # the UNETR decoder's hidden size


def test_stage_mlp_feeds_only_the_skip_branch():
    # The next stage consumes the ToM output itself; the MLP (after an instance norm) makes the skip features.
    torch.manual_seed(0)
    encoder = _tiny().vit.eval()
    seen = {}

    def keep(key, index):  # a forward hook returning None leaves the output alone
        return lambda module, args, out: seen.__setitem__(key, (args[0], out)[index])

    encoder.stages[0].register_forward_hook(keep("stage0", 1))
    encoder.downsample_layers[1].register_forward_hook(keep("down1_in", 0))
    outs = encoder(torch.randn(1, 2, 32, 16, 16))
    torch.testing.assert_close(seen["down1_in"], seen["stage0"])
    torch.testing.assert_close(outs[0], encoder.mlps[0](encoder.norms[0](seen["stage0"])))
    assert [tuple(o.shape[1:]) for o in outs] == [(4, 16, 8, 8), (8, 8, 4, 4), (8, 4, 2, 2), (8, 2, 1, 1)]


def test_deepest_grid_keeps_more_than_one_position():
    # A 16^3-padded input would leave one voxel at 1/16, where the instance norms are undefined in training.
    torch.manual_seed(0)
    model = _tiny(depths=(1, 1, 1, 1))
    sizes = []
    model.encoder5.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
    y = model(torch.randn(1, 2, 5, 6, 7))
    assert y.shape == (1, 3, 5, 6, 7) and sizes == [(1, 1, 2)]


def test_gsc_gate_choice_and_errors():
    torch.manual_seed(0)
    mul = _tiny(depths=(1, 1, 1, 1)).eval()
    add = _tiny(depths=(1, 1, 1, 1), gsc_gate="add").eval()
    add.load_state_dict(mul.state_dict())  # same parameters, different gate
    x = torch.randn(1, 2, 16, 16, 16)
    assert not torch.allclose(mul(x), add(x))
    with pytest.raises(ValueError, match="four stages"):
        create_model("segmamba", features=(8, 16, 32))
    with pytest.raises(ValueError, match="spatial_dims 2 or 3"):
        SegMamba(spatial_dims=1)

"""MedMamba: shapes in 1D/2D/3D at odd sizes, the no-SSM control, every scan route, the SS-Conv-SSM block's
channel split and shuffle, and MedMamba-T's parameter count."""

from __future__ import annotations

import pytest
import torch
from _classifier_checks import check_no_ssm, check_odd_shape, check_route, route_cases

from medssm.models import count_parameters
from medssm.models.medmamba import MedMamba, SSConvSSM, channel_shuffle

TINY = {"dims": (8, 16), "depths": (1, 1), "d_state": 4}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shape_at_odd_sizes(dims):
    check_odd_shape("medmamba", dims, **TINY)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_no_ssm_removes_only_the_scan_and_trains(dims):
    check_no_ssm("medmamba", dims, **TINY)


@pytest.mark.parametrize("route,dims", route_cases((1, 2, 3)))
def test_every_route_runs(route, dims):
    check_route("medmamba", route, dims, **TINY)


def test_channel_shuffle_interleaves_the_two_halves():
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 2)
    assert channel_shuffle(x, 2)[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3)[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(x, 4)


def test_block_sends_the_first_half_through_convs_and_the_second_through_ss2d():
    torch.manual_seed(0)
    block = SSConvSSM(2, 8, d_state=4).eval()
    assert block.self_attention.d_model == 4 and block.conv33conv33conv11[1].in_channels == 4
    x = torch.randn(2, 8, 5, 6)
    left, right = x.chunk(2, dim=1)
    expected_left = block.conv33conv33conv11(left)
    expected_right = block.self_attention(block.ln_1(right.movedim(1, -1)).movedim(-1, 1))
    y = block(x) - x
    # after the shuffle, even channels come from the conv half and odd ones from the SSM half
    torch.testing.assert_close(y[:, 0::2], expected_left)
    torch.testing.assert_close(y[:, 1::2], expected_right)
    # the halves do not mix: changing the SSM half leaves the conv half's outputs alone
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close((block(x2) - x2)[:, 0::2], expected_left)
    with pytest.raises(ValueError, match="even"):
        SSConvSSM(2, 7)


def test_medmamba_t_layout_and_parameter_count():
    model = MedMamba(2, 3, 6, dims=(96, 192, 384, 768), depths=(2, 2, 4, 2), patch_size=4)
    assert [len(stage) for stage in model.stages] == [2, 2, 4, 2]
    # the released MedMamba-T (6 classes) counts 14.5M parameters with these settings
    print(f"MedMamba-T: {count_parameters(model):,} parameters")
    assert 14e6 < count_parameters(model) < 15e6

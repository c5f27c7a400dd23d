"""The restoration blocks: channel attention, CAB, MaIR's sequence shuffle attention (against a transcription
of the released ShuffleAttn), the scaled residual block and the restorer skeleton's global residual."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from medssm.layers import MultiRouteMamba
from medssm.layers.restoration import (
    CAB,
    ChannelAttention,
    ResidualGroup,
    ResidualGroupRestorer,
    ScaledResidualBlock,
    SequenceShuffleAttention,
    check_depths,
    check_same_channels,
    drop_path_rates,
)


def released_shuffle_attn(y: torch.Tensor, conv: nn.Conv1d, group: int) -> torch.Tensor:
    """MaIR's VMM merge as released (2D): y (B, K*C, H, W) route-major -> gate by ShuffleAttn -> sum of the
    K chunks. ``conv`` holds the grouped 1x1 weights, used here as the released Conv2d."""
    b, channels, h, w = y.shape
    shuffled = y.reshape(b, channels // group, group, h, w).permute(0, 2, 1, 3, 4).reshape(b, channels, h, w)
    gate = torch.sigmoid(F.conv2d(F.adaptive_avg_pool2d(shuffled, 1), conv.weight.unsqueeze(-1), conv.bias,
                                  groups=group))
    gate = gate.reshape(b, group, channels // group, 1, 1).permute(0, 2, 1, 3, 4).reshape(b, channels, 1, 1)
    return sum((y * gate).chunk(channels // group, dim=1))


def test_sequence_shuffle_attention_matches_the_released_merge():
    torch.manual_seed(0)
    k, c = 4, 6
    ssa = SequenceShuffleAttention(c, k)
    nn.init.normal_(ssa.gating.weight)
    nn.init.normal_(ssa.gating.bias)
    grids = torch.randn(2, k, c, 5, 7)
    expected = released_shuffle_attn(grids.reshape(2, k * c, 5, 7), ssa.gating, group=c)
    torch.testing.assert_close(ssa(grids), expected)
    assert ssa.gating.weight.shape == (k * c, k, 1)  # a K x K mix per channel


def test_sequence_shuffle_attention_mixes_routes_within_a_channel_only():
    torch.manual_seed(0)
    ssa = SequenceShuffleAttention(3, 4)
    grids = torch.randn(1, 4, 3, 4, 4, 2)  # 3D grids
    changed = grids.clone()
    changed[:, :, 1] += 5.0  # channel 1 of every route
    out, out_changed = ssa(grids), ssa(changed)
    torch.testing.assert_close(out[:, [0, 2]], out_changed[:, [0, 2]])
    assert not torch.allclose(out[:, 1], out_changed[:, 1])
    with pytest.raises(ValueError, match=r"grids must be \(batch, 4, 3, \*spatial\)"):
        ssa(grids[:, :3])
    with pytest.raises(ValueError, match="merges several routes"):
        SequenceShuffleAttention(3, 1)


def test_multi_route_mamba_merges_with_ssa_and_drops_it_without_ssm():
    torch.manual_seed(0)
    mixer = MultiRouteMamba(2, 8, route="nested_s", merge="ssa")
    assert isinstance(mixer.gating, SequenceShuffleAttention) and mixer.gating.num_routes == 4
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    mixer(x).square().mean().backward()
    assert mixer.gating.gating.weight.grad is not None
    assert not hasattr(MultiRouteMamba(2, 8, route="nested_s", merge="ssa", ssm=False), "gating")
    with pytest.raises(ValueError, match="merge='ssa' compares routes"):
        MultiRouteMamba(2, 8, route="raster", merge="ssa")


def test_channel_attention_and_cab():
    torch.manual_seed(0)
    attention = ChannelAttention(2, 12, squeeze_factor=4)
    x = torch.rand(2, 12, 5, 6)
    conv1, conv2 = attention.attention[1], attention.attention[3]
    gate = torch.sigmoid(conv2(F.relu(conv1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(attention(x), x * gate)
    assert conv1.out_channels == 3
    cab = CAB(3, 30)  # MambaIR's compress 3, squeeze 30: hidden 10, attention width 1
    assert cab.cab[0].out_channels == 10 and cab.cab[3].attention[1].out_channels == 1
    assert cab(torch.randn(1, 30, 3, 4, 5)).shape == (1, 30, 3, 4, 5)


def test_scaled_residual_block_formula():
    torch.manual_seed(0)
    block = ScaledResidualBlock(2, 4, op=nn.Conv2d(4, 4, 1), ffn=nn.Conv2d(4, 4, 3, padding=1))
    assert block.skip_scale.shape == block.skip_scale2.shape == (4,)
    with torch.no_grad():
        block.skip_scale.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
        block.skip_scale2.uniform_()
    x = torch.randn(2, 4, 5, 6)

    def ln(norm, t):
        return norm(t.movedim(1, -1)).movedim(-1, 1)

    s1, s2 = block.skip_scale.view(1, 4, 1, 1), block.skip_scale2.view(1, 4, 1, 1)
    y = s1 * x + block.self_attention(ln(block.ln_1, x))
    expected = s2 * y + block.conv_blk(ln(block.ln_2, y))
    torch.testing.assert_close(block(x), expected)


def test_restorer_is_input_plus_a_residual():
    torch.manual_seed(0)
    groups = [ResidualGroup(2, 8, [nn.Identity()])]
    net = ResidualGroupRestorer(2, 1, 8, groups)
    x = torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        net.conv_last.weight.zero_()
        net.conv_last.bias.zero_()
    torch.testing.assert_close(net(x), x)  # nothing learned yet: the identity
    with torch.no_grad():
        net.conv_last.bias.fill_(0.25)
    torch.testing.assert_close(net(x), x + 0.25)


def test_helpers_check_their_arguments():
    assert drop_path_rates((2, 3), 0.1) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert check_depths([1, 2], 8) == (1, 2)
    with pytest.raises(ValueError, match="depths must be a non-empty list"):
        check_depths([], 8)
    with pytest.raises(ValueError, match="out_channels must equal in_channels=1, got 2"):
        check_same_channels(1, 2)

"""Patch embedding, merging and expanding: shapes on odd/prime sizes, the layouts they follow, and backward."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from medssm.layers import PatchEmbed, PatchExpanding, PatchMerging, pad_to_multiple


def test_pad_to_multiple_pads_the_high_side_with_zeros():
    x = torch.randn(2, 3, 5, 7)
    assert pad_to_multiple(x, 1) is x
    padded = pad_to_multiple(x, (4, 2))
    assert padded.shape == (2, 3, 8, 8)
    assert torch.equal(padded[..., :5, :7], x) and padded[..., 5:, :].abs().sum() == 0
    assert padded[..., 7:].abs().sum() == 0
    assert pad_to_multiple(torch.randn(1, 1, 3, 4, 5), 3).shape == (1, 1, 3, 6, 6)


@pytest.mark.parametrize("spatial, patch, grid", [
    ((17, 23), 4, (5, 6)),
    ((13, 13), (2, 4), (7, 4)),
    ((1, 1), 4, (1, 1)),
    ((7, 11, 13), 2, (4, 6, 7)),
    ((5, 3, 2), (1, 2, 4), (5, 2, 1)),
    ((31,), 4, (8,)),
], ids=str)
def test_patch_embed_any_size(spatial, patch, grid):
    torch.manual_seed(0)
    embed = PatchEmbed(len(spatial), 3, 8, patch)
    x = torch.randn(2, 3, *spatial)
    out = embed(x)
    assert out.shape == (2, 8, *grid)
    patch = (patch,) * len(spatial) if isinstance(patch, int) else patch
    highs = [g * p - n for g, p, n in zip(grid, patch, spatial, strict=True)]
    expected = embed.proj(F.pad(x, [v for h in reversed(highs) for v in (0, h)]))
    expected = F.layer_norm(expected.movedim(1, -1), (8,), embed.norm.weight, embed.norm.bias).movedim(-1, 1)
    torch.testing.assert_close(out, expected)


def test_patch_embed_without_norm_is_the_convolution():
    embed = PatchEmbed(2, 1, 4, 2, norm=False)
    x = torch.randn(1, 1, 6, 4)
    torch.testing.assert_close(embed(x), embed.proj(x))
    assert list(dict(embed.named_parameters())) == ["proj.weight", "proj.bias"]


def swin_merge(x):
    """The reference concat: the 2^d neighbours with the first spatial axis varying fastest."""
    d = x.dim() - 2
    offsets = [o[::-1] for o in itertools.product(range(2), repeat=d)]  # (0,0), (1,0), (0,1), (1,1) in 2D
    return torch.cat([x[(..., *[slice(o, None, 2) for o in offset])] for offset in offsets], 1)


@pytest.mark.parametrize("spatial, merged", [
    ((7, 13), (4, 7)),
    ((2, 5), (1, 3)),
    ((1, 1), (1, 1)),
    ((5, 3, 7), (3, 2, 4)),
    ((4, 4, 4), (2, 2, 2)),
    ((11,), (6,)),
], ids=str)
def test_patch_merging_any_size(spatial, merged):
    torch.manual_seed(0)
    merge = PatchMerging(len(spatial), 4)
    x = torch.randn(2, 4, *spatial)
    out = merge(x)
    assert out.shape == (2, 8, *merged)
    expected = merge.reduction(merge.norm(swin_merge(pad_to_multiple(x, 2)).movedim(1, -1))).movedim(-1, 1)
    torch.testing.assert_close(out, expected)


def test_patch_merging_2d_order_is_swin():
    x = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    merge = PatchMerging(2, 1, out_dim=4)
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(4))
    merge.norm = torch.nn.Identity()
    assert merge(x).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]  # x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], ...
    assert PatchMerging(3, 6, out_dim=5).reduction.weight.shape == (5, 48)


@pytest.mark.parametrize("spatial, scale", [((3, 5), 2), ((2, 3, 5), 2), ((1, 7), 4), ((3,), 3)], ids=str)
def test_patch_expanding_shuffle(spatial, scale):
    torch.manual_seed(0)
    expand = PatchExpanding(len(spatial), 16, scale=scale)
    x = torch.randn(2, 16, *spatial)
    out = expand(x)
    assert out.shape == (2, 8, *[n * scale for n in spatial])
    d = len(spatial)
    channels = expand.expand(x.movedim(1, -1)).unflatten(-1, (*[scale] * d, 8))  # (b, *spatial, s, .., s, 8)
    for offset in itertools.product(range(scale), repeat=d):
        fine = out[(..., *[slice(o, None, scale) for o in offset])].movedim(1, -1)
        coarse = F.layer_norm(channels[(..., *offset, slice(None))], (8,), expand.norm.weight, expand.norm.bias)
        torch.testing.assert_close(fine, coarse)


@pytest.mark.parametrize("spatial", [(6, 10), (4, 2, 8)], ids=str)
def test_merging_then_expanding_restores_the_size(spatial):
    x = torch.randn(1, 8, *spatial, requires_grad=True)
    merge, expand = PatchMerging(len(spatial), 8), PatchExpanding(len(spatial), 16)
    out = expand(merge(x))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for module in (merge, expand):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_embed_backward_on_odd_3d_input():
    embed = PatchEmbed(3, 2, 4, (2, 3, 2))
    x = torch.randn(1, 2, 5, 7, 3, requires_grad=True)
    embed(x).sum().backward()
    assert x.grad.shape == x.shape and embed.proj.weight.grad is not None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"spatial_dims must be one of \(1, 2, 3\), got 4"):
        PatchMerging(4, 8)
    with pytest.raises(ValueError, match="positive int or 2 positive ints"):
        PatchEmbed(2, 1, 8, (2, 2, 2))
    with pytest.raises(ValueError, match="out_dim and scale must be positive"):
        PatchExpanding(2, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 8, \*spatial\) with 2 spatial dims"):
        PatchMerging(2, 8)(torch.randn(1, 8, 4, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3, \*spatial\) with 3 spatial dims"):
        PatchEmbed(3, 3, 8, 2)(torch.randn(1, 4, 4, 4, 4))

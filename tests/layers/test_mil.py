"""The MIL building blocks: attention pooling (Ilse et al.'s equations), the colon patch encoder, bag checks."""

from __future__ import annotations

import pytest
import torch

from medssm.layers.mil import AttentionPool, ColonCNN, build_encoder, encode_bag, resolve_sizes


@pytest.mark.parametrize("gated", [False, True])
def test_attention_pool_follows_ilse_equations(gated):
    torch.manual_seed(0)
    pool = AttentionPool(6, 4, gated=gated)
    h = torch.randn(2, 5, 6)
    z, a = pool(h)
    hidden = torch.tanh(pool.V(h)) * (torch.sigmoid(pool.U(h)) if gated else 1)
    expected_a = torch.softmax(pool.w(hidden)[..., 0], dim=1)
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(z, (expected_a[..., None] * h).sum(1))
    torch.testing.assert_close(a.sum(1), torch.ones(2))
    assert (pool.U is not None) == gated


def test_colon_cnn_shapes_and_errors():
    cnn = ColonCNN()
    assert cnn(torch.rand(7, 3, 27, 27)).shape == (7, 512)
    with pytest.raises(ValueError, match=r"ColonCNN takes patches \(N, 3, 27, 27\)"):
        cnn(torch.rand(7, 3, 25, 25))
    encoder, width = build_encoder("colon_cnn", 3)
    assert width == 512 and isinstance(encoder, ColonCNN)
    assert encode_bag(torch.rand(2, 4, 3, 27, 27), encoder, 3).shape == (2, 4, 512)
    with pytest.raises(ValueError, match="encoder must be None"):
        build_encoder("resnet", 3)


def test_bag_checks_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"a feature bag must be \(batch, n, 8\).*needs encoder='colon_cnn'"):
        encode_bag(torch.rand(1, 4, 3, 27, 27), None, 8)
    with pytest.raises(ValueError, match=r"a feature bag must be \(batch, n, 8\), got \(1, 4, 9\)"):
        encode_bag(torch.rand(1, 4, 9), None, 8)
    with pytest.raises(ValueError, match=r"n >= 1"):
        encode_bag(torch.rand(1, 0, 8), None, 8)


def test_issue_names_are_aliases_of_monai_names():
    assert resolve_sizes(512, 2, 64, 3) == (64, 3)
    assert resolve_sizes(32, 4, None, None) == (32, 4)
    with pytest.raises(ValueError, match="in_features=64 and in_channels=32 disagree"):
        resolve_sizes(32, 2, 64, None)

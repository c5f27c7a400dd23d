"""The MIL building blocks: attention pooling (Ilse et al.'s equations), the colon patch encoder, bag checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medssm.layers.mil import COLON_MEAN, COLON_STD, AttentionPool, ColonCNN, build_encoder, encode_bag, resolve_sizes

COLON = Path(__file__).resolve().parents[3] / "shared" / "data" / "pathology_mil" / "colon_crchistophenotypes"
if not COLON.exists():
    COLON = Path("/work/shared/data/pathology_mil/colon_crchistophenotypes")


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


def test_colon_cnn_standardises_patches_per_channel():
    torch.manual_seed(0)
    cnn = ColonCNN().eval()
    x = torch.rand(5, 3, 27, 27)
    mean, std = torch.tensor(COLON_MEAN)[:, None, None], torch.tensor(COLON_STD)[:, None, None]
    torch.testing.assert_close(cnn(x), cnn.fc(cnn.features((x - mean) / std).flatten(1)))
    custom = ColonCNN(mean=0.5, std=0.25).eval()
    custom.load_state_dict(cnn.state_dict())  # mean and std are not in the state dict: the arguments set them
    torch.testing.assert_close(custom(x), cnn.fc(cnn.features((x - 0.5) / 0.25).flatten(1)))
    one = ColonCNN(in_channels=1).eval()
    torch.testing.assert_close(one.mean.flatten(), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"mean must be one value or 3 \(one per channel\), got \(0.1, 0.2\)"):
        ColonCNN(mean=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"std must be one value or 3 \(one per channel\), all > 0"):
        ColonCNN(std=(0.1, 0.0, 0.2))


@pytest.mark.skipif(not COLON.exists(), reason="colon MIL data absent")
def test_colon_statistics_are_the_training_patches():
    from medssm.data.mil_colon import ColonMIL

    train = ColonMIL(COLON, "train", fold=0, num_folds=10)
    pixels = np.concatenate([train.load(i)[0].transpose(1, 0, 2, 3).reshape(3, -1) for i in range(len(train))], 1)
    assert pixels.shape == (3, 18543 * 27 * 27)
    np.testing.assert_allclose(pixels.mean(1) / 255, COLON_MEAN, atol=1e-3)
    np.testing.assert_allclose(pixels.std(1) / 255, COLON_STD, atol=1e-3)

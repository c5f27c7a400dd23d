"""Mlp (last axis) and ConvMlp (channel axis): shapes, hidden width, parameter names, their agreement."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import ConvMlp, Mlp


def test_mlp_shapes_names_and_hidden_width():
    mlp = Mlp(8, mlp_ratio=2.0, out_dim=5)
    assert mlp.fc1.out_features == 16 and mlp.fc2.out_features == 5
    assert sorted(mlp.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 5)
    assert Mlp(8, 3).fc1.out_features == 3
    assert Mlp(3, mlp_ratio=0.1).fc1.out_features == 1
    with pytest.raises(ValueError, match="hidden_dim must be positive"):
        Mlp(8, 0)
    with pytest.raises(ValueError, match="mlp_ratio must be positive"):
        Mlp(8, mlp_ratio=0)


def test_mlp_dropout_only_in_training():
    torch.manual_seed(0)
    mlp = Mlp(8, 16, drop=0.5)
    x = torch.randn(4, 8)
    torch.testing.assert_close(mlp.eval()(x), mlp.fc2(mlp.act(mlp.fc1(x))))
    assert not torch.allclose(mlp.train()(x), mlp.eval()(x))


@pytest.mark.parametrize("spatial_dims,size", [(1, (7,)), (2, (3, 4)), (3, (2, 3, 2))])
def test_conv_mlp_equals_mlp_on_the_channel_axis(spatial_dims, size):
    torch.manual_seed(0)
    conv = ConvMlp(spatial_dims, 6, 12, out_dim=4)
    mlp = Mlp(6, 12, out_dim=4)
    mlp.load_state_dict({k: v.flatten(1) if v.dim() > 1 else v for k, v in conv.state_dict().items()})
    x = torch.randn(2, 6, *size)
    y = conv(x)
    assert y.shape == (2, 4, *size)
    torch.testing.assert_close(y, mlp(x.movedim(1, -1)).movedim(-1, 1))
    with pytest.raises(ValueError, match="spatial_dims"):
        ConvMlp(4, 6)

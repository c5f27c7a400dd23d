"""Layer factories by spatial_dims: the torch class for 1/2/3 D, arguments passed through, errors naming
spatial_dims (or the unknown kind)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medssm.layers import (
    ChannelsFirstLayerNorm,
    activation,
    conv_nd,
    conv_transpose_nd,
    dropout_nd,
    norm_nd,
    pool_nd,
)

SIZES = {1: (8,), 2: (6, 4), 3: (4, 2, 6)}


@pytest.mark.parametrize("d", [1, 2, 3])
def test_conv_factories_build_the_torch_class_with_its_arguments(d):
    conv = conv_nd(d, 3, 5, 3, padding=1, stride=2, bias=False)
    assert type(conv) is getattr(nn, f"Conv{d}d") and conv.bias is None and conv.stride == (2,) * d
    up = conv_transpose_nd(d, 5, 3, 2, stride=2)
    assert type(up) is getattr(nn, f"ConvTranspose{d}d")
    x = torch.randn(2, 3, *SIZES[d])
    assert up(conv(x)).shape == x.shape
    torch.manual_seed(0)
    a = conv_nd(d, 3, 5, 3)
    torch.manual_seed(0)
    b = getattr(nn, f"Conv{d}d")(3, 5, 3)
    torch.testing.assert_close(a.weight, b.weight)  # the same initialisation as the constructor


@pytest.mark.parametrize("d", [1, 2, 3])
def test_norms_pools_and_dropout_by_spatial_dims(d):
    x = torch.randn(2, 8, *SIZES[d])
    assert type(norm_nd("batch", d, 8)) is getattr(nn, f"BatchNorm{d}d")
    instance = norm_nd("instance", d, 8, affine=True)
    assert type(instance) is getattr(nn, f"InstanceNorm{d}d") and instance.weight is not None
    group = norm_nd("group", d, 8, num_groups=2)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 2
    assert type(norm_nd("layer", d, 8)) is nn.LayerNorm
    cf = norm_nd("layer_channels_first", d, 8)
    assert isinstance(cf, ChannelsFirstLayerNorm)
    for name in ("batch", "instance", "group", "layer_channels_first"):
        assert norm_nd(name, d, 8)(x).shape == x.shape
    assert type(pool_nd("max", d, 2)) is getattr(nn, f"MaxPool{d}d")
    assert type(pool_nd("avg", d, 2)) is getattr(nn, f"AvgPool{d}d")
    assert pool_nd("adaptive_avg", d, 1)(x).shape == (2, 8) + (1,) * d
    assert pool_nd("adaptive_max", d, 1)(x).shape == (2, 8) + (1,) * d
    assert type(dropout_nd(d, 0.2)) is nn.Dropout
    channel = dropout_nd(d, 0.5, channelwise=True).train()(torch.ones(4, 16, *SIZES[d]))
    per_channel = channel.flatten(2)
    assert torch.equal(per_channel.amax(-1), per_channel.amin(-1))  # whole channels are kept or zeroed


def test_channels_first_layer_norm_is_layer_norm_on_the_channel_axis():
    torch.manual_seed(0)
    cf = ChannelsFirstLayerNorm(6)
    plain = nn.LayerNorm(6)
    with torch.no_grad():
        plain.weight.normal_()
        plain.bias.normal_()
    cf.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(cf(x), plain(x.movedim(1, -1)).movedim(-1, 1))


def test_activation_by_name():
    assert type(activation("gelu")) is nn.GELU and type(activation("swish")) is nn.SiLU
    assert activation("leaky_relu", negative_slope=0.2).negative_slope == 0.2


@pytest.mark.parametrize("build", [
    lambda: conv_nd(4, 1, 1, 1), lambda: conv_transpose_nd(0, 1, 1, 1), lambda: norm_nd("batch", 4, 8),
    lambda: pool_nd("max", 5, 2), lambda: dropout_nd(4, 0.1),
])
def test_bad_spatial_dims_name_spatial_dims(build):
    with pytest.raises(ValueError, match=r"spatial_dims must be one of \(1, 2, 3\)"):
        build()


def test_unknown_kinds_are_named():
    with pytest.raises(ValueError, match="norm must be one of.*'weight'"):
        norm_nd("weight", 2, 8)
    with pytest.raises(ValueError, match="activation must be one of.*'relu6'"):
        activation("relu6")
    with pytest.raises(ValueError, match="pool kind must be one of.*'lp'"):
        pool_nd("lp", 2, 2)

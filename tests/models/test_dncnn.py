"""DnCNN: depth and width as the paper's (556k parameters), conv-BN-ReLU layout, residual learning (the
output is the input minus the predicted noise), odd sizes in 1D/2D/3D."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medssm.models import count_parameters, create_model


def test_paper_layout_and_size():
    model = create_model("dncnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 17 and len(norms) == 15
    assert [c.out_channels for c in convs] == [64] * 16 + [1]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert isinstance(model.body[1], nn.ReLU) and isinstance(model.body[3], nn.BatchNorm2d)
    # first conv 640 + 15 x (conv 36,864 + BN 128) + last conv 577
    assert count_parameters(model) == 556_097
    assert len([m for m in create_model("dncnn", depth=20).modules() if isinstance(m, nn.Conv2d)]) == 20


def test_residual_learning():
    model = create_model("dncnn", depth=4, features=8).eval()
    x = torch.rand(2, 1, 11, 13)
    torch.testing.assert_close(model(x), x - model.body(x))
    with torch.no_grad():
        model.body[-1].weight.zero_()
        model.body[-1].bias.zero_()
    torch.testing.assert_close(model(x), x)


@pytest.mark.parametrize("dims,size", [(1, (31,)), (2, (13, 17)), (3, (5, 6, 7))])
def test_odd_sizes(dims, size):
    model = create_model("dncnn", spatial_dims=dims, in_channels=2, out_channels=2, depth=5, features=8)
    x = torch.rand(2, 2, *size)
    assert model(x).shape == x.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth must be an integer >= 2"):
        create_model("dncnn", depth=1)
    with pytest.raises(ValueError, match="out_channels must equal in_channels=1, got 2"):
        create_model("dncnn", out_channels=2)

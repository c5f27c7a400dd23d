"""MambaOut: shapes in 1D/2D/3D at odd sizes, no SSM parameter anywhere, the Gated CNN block's split and the
released MambaOut-Femto's parameter count."""

from __future__ import annotations

import pytest
import torch
from _classifier_checks import SCAN_PARAMETERS, check_odd_shape, train_step

from medssm.models import count_parameters, create_model
from medssm.models.mambaout import GatedCNNBlock, MambaOut

TINY = {"dims": (8, 16, 16, 24), "depths": (1, 1, 1, 1)}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shape_at_odd_sizes(dims):
    check_odd_shape("mambaout", dims, **TINY)


def test_no_ssm_parameters_and_no_ssm_argument():
    model = create_model("mambaout")
    assert not any(SCAN_PARAMETERS & set(n.split(".")) for n, _ in model.named_parameters())
    with pytest.raises(TypeError, match="'ssm'"):
        create_model("mambaout", ssm=False)
    train_step(create_model("mambaout", **TINY), torch.randn(2, 1, 19, 23))


def test_gated_cnn_block_splits_gate_identity_conv_as_released():
    block = GatedCNNBlock(2, 12, conv_ratio=0.5)  # hidden int(8/3 * 12) = 32: gate 32, identity 26, conv 6
    assert block.split_sizes == (32, 26, 6)
    assert block.fc1.out_features == 64 and block.conv.in_channels == 6 and block.conv.groups == 6
    assert block.conv.kernel_size == (7, 7) and block.fc2.in_features == 32
    assert GatedCNNBlock(3, 8).conv.kernel_size == (7, 7, 7)
    # with fc2 zeroed the block is the identity (residual), whatever the input
    torch.nn.init.zeros_(block.fc2.weight)
    torch.nn.init.zeros_(block.fc2.bias)
    x = torch.randn(2, 12, 5, 6)
    torch.testing.assert_close(block(x), x)
    with pytest.raises(ValueError, match="conv_ratio"):
        GatedCNNBlock(2, 12, conv_ratio=3.0)


def test_mambaout_femto_parameter_count_matches_the_release():
    # MambaOut-Femto (released: 7.3M at 1000 ImageNet classes, 3 input channels, stride-4 stem).
    model = MambaOut(2, 3, 1000, dims=(48, 96, 192, 288), depths=(3, 3, 9, 3), stem_stride=4)
    assert round(count_parameters(model) / 1e6, 1) == 7.3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)

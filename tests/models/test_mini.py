"""The mini models' own checks (the registry-wide tests cover their forward, backward and counts)."""

from __future__ import annotations

import pytest
import torch

from medssm.models import create_model


@pytest.mark.parametrize("name", ["mini_mamba_unet", "mini_mamba_classifier"])
def test_inputs_of_the_wrong_layout_are_named(name):
    model = create_model(name, spatial_dims=2, in_channels=2)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2, \*spatial\) with 2 spatial dims"):
        model(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"got \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))

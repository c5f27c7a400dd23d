"""RMSNormGated against the formula, per group, with the gate before or after the norm."""

import pytest
import torch
import torch.nn.functional as F

from medssm.layers import RMSNormGated


def rms(v, eps):
    return v / torch.sqrt(v.square().mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
def test_matches_formula(norm_before_gate, group_size):
    torch.manual_seed(0)
    norm = RMSNormGated(12, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12))
    x, z = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    size = 12 if group_size is None else group_size
    if norm_before_gate:
        expected = rms(x.view(2, 3, -1, size), 1e-5).view(2, 3, 12) * norm.weight * F.silu(z)
    else:
        expected = rms((x * F.silu(z)).view(2, 3, -1, size), 1e-5).view(2, 3, 12) * norm.weight
    torch.testing.assert_close(norm(x, z), expected)
    torch.testing.assert_close(norm(x), rms(x.view(2, 3, -1, size), 1e-5).view(2, 3, 12) * norm.weight)


def test_parameters_dtype_and_errors():
    norm = RMSNormGated(8, group_size=4)
    assert list(dict(norm.named_parameters())) == ["weight"] and norm.norm_before_gate is False
    assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="group_size=3 must divide hidden_size=8"):
        RMSNormGated(8, group_size=3)
    with pytest.raises(ValueError, match="x must have 8 channels"):
        norm(torch.randn(2, 6))
    with pytest.raises(ValueError, match="z must have the shape of x"):
        norm(torch.randn(2, 8), torch.randn(8))

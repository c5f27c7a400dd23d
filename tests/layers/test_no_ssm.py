"""``ssm=False``: every Mamba mixer and vision block without its selective scan (MambaOut's gated CNN), the
no-SSM control of any network built from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssm.layers import (
    LBMambaBlock,
    Mamba,
    MultiHeadScanBlock,
    MultiRouteMamba,
    ResidualVisionMamba,
    ToMBlock,
    VimBlock,
    VSSBlock,
)

SCAN_PARAMETERS = ("x_proj", "dt_proj", "A_log", "D", "A_logs", "Ds", "dt_projs", "_b")

BLOCKS = [
    ("mamba", lambda ssm: Mamba(16, ssm=ssm), (2, 7, 16)),
    ("multi_route", lambda ssm: MultiRouteMamba(2, 16, ssm=ssm), (2, 16, 5, 3)),
    ("vss", lambda ssm: VSSBlock(2, 16, ssm=ssm), (2, 16, 5, 3)),
    ("tom", lambda ssm: ToMBlock(3, 16, gsc=True, ssm=ssm), (2, 16, 3, 2, 5)),
    ("vim", lambda ssm: VimBlock(1, 16, ssm=ssm), (2, 16, 11)),
    ("rvm", lambda ssm: ResidualVisionMamba(2, 16, 24, ssm=ssm), (2, 16, 5, 3)),
    ("mhs", lambda ssm: MultiHeadScanBlock(2, 16, ssm=ssm), (2, 16, 6, 6)),
    ("lbmamba", lambda ssm: LBMambaBlock(2, 16, ssm=ssm), (2, 16, 6, 6)),
]


@pytest.mark.parametrize("name,make,shape", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_no_ssm_block_has_no_scan_parameters_and_trains(name, make, shape):
    torch.manual_seed(0)
    with_ssm, without = make(True), make(False)
    names = [n for n, _ in without.named_parameters()]
    assert not [n for n in names if any(n.split(".")[-1].startswith(k) or n.endswith(k) for k in SCAN_PARAMETERS)]
    kept = {n for n, _ in with_ssm.named_parameters()}
    assert set(names) <= kept, "ssm=False must only remove parameters, never add or rename them"
    x = torch.randn(shape, requires_grad=True)
    y = without(x)
    assert y.shape == with_ssm(x).shape
    y.square().mean().backward()
    assert all(p.grad is not None for p in without.parameters())


def test_no_ssm_mamba_is_the_gated_conv_and_its_step_matches_forward():
    torch.manual_seed(0)
    m = Mamba(8, d_conv=3, ssm=False).eval()
    x = torch.randn(2, 6, 8)
    u, z = m.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    conv = F.silu(m.conv1d(u)[..., :6])  # causal: the first L outputs of the left-padded conv
    expected = m.out_proj((conv * F.silu(z)).transpose(1, 2))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)
    conv_state, ssm_state = m.allocate_inference_cache(2)
    steps = torch.cat([m.step(x[:, i:i + 1], conv_state, ssm_state) for i in range(6)], dim=1)
    torch.testing.assert_close(steps, expected, rtol=1e-5, atol=1e-6)


def test_no_ssm_keeps_the_rest_of_the_initialisation():
    # The same seed gives the same projections and convolution with and without the scan's parameters only
    # where they are created before the scan's: in_proj and conv.
    torch.manual_seed(0)
    a = MultiRouteMamba(2, 16)
    torch.manual_seed(0)
    b = MultiRouteMamba(2, 16, ssm=False)
    torch.testing.assert_close(a.in_proj.weight, b.in_proj.weight)
    torch.testing.assert_close(a.conv.weight, b.conv.weight)

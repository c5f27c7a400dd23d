"""SR-Mamba (MambaMIL): the stride reordering is a permutation that restore() inverts, and the mixer equals its
two branches computed by hand."""

from __future__ import annotations

import pytest
import torch

from medssm.layers import Mamba
from medssm.layers.sr_mamba import SRMamba, reorder, restore


def _old_forward(mixer: SRMamba, x: torch.Tensor) -> torch.Tensor:
    """SRMamba's forward before the reordering moved to the rows of in_proj's output: each of x and z padded,
    reordered and copied as (batch, d_inner, L), by the reference reorder written out with pad and views."""
    def old_reorder(t, rate):
        groups = -(-t.shape[-1] // rate)
        t = torch.nn.functional.pad(t, (0, groups * rate - t.shape[-1]))
        return t.unflatten(-1, (groups, rate)).transpose(-1, -2).flatten(-2)

    def old_restore(t, rate, length):
        return t.unflatten(-1, (rate, t.shape[-1] // rate)).transpose(-1, -2).flatten(-2)[..., :length]

    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    ordered, reordered = mixer._branch_parameters()
    y = mixer.scan_branch(u, z, *ordered)
    y_r = mixer.scan_branch(old_reorder(u, mixer.rate), old_reorder(z, mixer.rate), *reordered)
    return mixer.out_proj((y + old_restore(y_r, mixer.rate, x.shape[1])).transpose(1, 2))


@pytest.mark.parametrize("ssm", [True, False])
def test_sr_mamba_gives_the_outputs_and_gradients_of_the_pad_and_copy_reordering(ssm):
    """The one-copy reordering of xz's rows (with the "cpu" conv and scan kernels reading it in place) gives
    the same outputs, bit for bit, and the same gradients as reordering padded (batch, d_inner, L) copies."""
    torch.manual_seed(0)
    mixer = SRMamba(16, rate=3, d_state=4, ssm=ssm)
    x = torch.randn(2, 71, 16, requires_grad=True)
    new, old = mixer(x), _old_forward(mixer, x)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    g = torch.randn_like(new)
    leaves = [x, *mixer.parameters()]
    for a, b in zip(torch.autograd.grad(new, leaves, g), torch.autograd.grad(old, leaves, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length,rate", [(1, 10), (7, 3), (9, 3), (10, 10), (23, 10), (5, 1)])
def test_reorder_is_the_stride_permutation_and_restore_inverts_it(length, rate):
    x = torch.arange(1, length + 1, dtype=torch.float32).view(1, 1, length)  # positions 1..L, 0 = padding
    groups = -(-length // rate)
    order = reorder(x, rate)[0, 0].long() - 1
    expected = [k * rate + w for w in range(rate) for k in range(groups)]  # [0, r, 2r, ..., 1, r + 1, ...]
    assert order.tolist() == [i if i < length else -1 for i in expected]
    assert sorted(i for i in order.tolist() if i >= 0) == list(range(length))  # each instance exactly once
    y = torch.randn(2, 4, length)
    torch.testing.assert_close(restore(reorder(y, rate), rate, length), y, rtol=0, atol=0)
    # along another axis: the same permutation of the rows of a (batch, L, d) tensor
    rows = reorder(y.transpose(1, 2), rate, dim=1)
    torch.testing.assert_close(rows, reorder(y, rate).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(restore(rows, rate, length, dim=1), y.transpose(1, 2), rtol=0, atol=0)


def test_reorder_rejects_a_bad_rate():
    with pytest.raises(ValueError, match="rate must be a positive integer"):
        reorder(torch.zeros(1, 1, 4), 0)
    with pytest.raises(ValueError, match="rate must be a positive integer"):
        SRMamba(8, rate=0)
    with pytest.raises(ValueError, match="restore expects 12 reordered positions along dim -1"):
        restore(torch.zeros(1, 1, 10), 3, 11)


def test_sr_mamba_is_the_sum_of_its_two_branches():
    torch.manual_seed(0)
    mixer = SRMamba(16, rate=3, d_state=4, scan_backend="reference").eval()
    x = torch.randn(2, 11, 16)
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    y = mixer.scan_branch(u, z, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    # the reordered branch is a plain Mamba branch run on the reordered sequence with the *_b parameters
    y_b = mixer.scan_branch(reorder(u, 3), reorder(z, 3), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b,
                            mixer.A_b_log, mixer.D_b)
    expected = mixer.out_proj((y + restore(y_b, 3, 11)).transpose(1, 2))
    torch.testing.assert_close(mixer(x), expected)
    # rate 1 reorders nothing: both branches see the bag order
    one = SRMamba(16, rate=1, d_state=4, scan_backend="reference")
    assert torch.isfinite(one(x)).all()


def test_sr_mamba_branches_have_separate_ssm_parameters_and_ssm_false_removes_only_them():
    full, plain = SRMamba(32, d_state=8), SRMamba(32, d_state=8, ssm=False)
    names = dict(full.named_parameters())
    for a, b in (("A_log", "A_b_log"), ("D", "D_b"), ("x_proj.weight", "x_proj_b.weight"),
                 ("conv1d.weight", "conv1d_b.weight"), ("dt_proj.bias", "dt_proj_b.bias")):
        assert names[a] is not names[b] and names[a].shape == names[b].shape
    ssm_names = {n for n in names if n.split(".")[0] in ("x_proj", "dt_proj", "A_log", "D", "x_proj_b", "dt_proj_b",
                                                        "A_b_log", "D_b")}
    assert set(dict(plain.named_parameters())) == set(names) - ssm_names
    single = sum(p.numel() for n, p in Mamba(32, d_state=8).named_parameters() if n.split(".")[0] in
                 ("x_proj", "dt_proj", "A_log", "D"))
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * single
    assert plain(torch.randn(1, 5, 32)).shape == (1, 5, 32)

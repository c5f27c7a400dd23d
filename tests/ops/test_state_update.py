"""selective_state_update against a hand loop over the recurrence, with and without heads and groups."""

import math

import pytest
import torch

from medssm.ops import selective_scan, selective_state_update


def softplus(v):
    return math.log1p(math.exp(v))


def silu(v):
    return v / (1 + math.exp(-v))


def update_loop(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Element by element, heads layout: state (b, h, p, n), x/dt/z (b, h, p), A (h, p, n), B/C (b, g, n)."""
    batch, nheads, dim, dstate = state.shape
    per_group = nheads // B.shape[1]
    new_state = state.clone().double()
    out = torch.zeros(batch, nheads, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(nheads):
            g = h // per_group
            for p in range(dim):
                step = dt[b, h, p].item() + (dt_bias[h, p].item() if dt_bias is not None else 0.0)
                step = softplus(step) if dt_softplus else step
                acc = 0.0
                for n in range(dstate):
                    hn = math.exp(step * A[h, p, n].item()) * state[b, h, p, n].item() \
                        + step * B[b, g, n].item() * x[b, h, p].item()
                    new_state[b, h, p, n] = hn
                    acc += hn * C[b, g, n].item()
                if D is not None:
                    acc += D[h, p].item() * x[b, h, p].item()
                if z is not None:
                    acc *= silu(z[b, h, p].item())
                out[b, h, p] = acc
    return new_state, out


def make(batch=2, nheads=4, dim=3, dstate=5, ngroups=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        state=torch.randn(batch, nheads, dim, dstate, generator=g),
        x=torch.randn(batch, nheads, dim, generator=g),
        dt=torch.randn(batch, nheads, dim, generator=g),
        A=-torch.rand(nheads, dim, dstate, generator=g) - 0.5,
        B=torch.randn(batch, ngroups, dstate, generator=g),
        C=torch.randn(batch, ngroups, dstate, generator=g),
        D=torch.randn(nheads, dim, generator=g),
        z=torch.randn(batch, nheads, dim, generator=g),
        dt_bias=torch.rand(nheads, dim, generator=g) - 2.0,
    )


@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("extras", [True, False])
def test_heads_matches_loop(ngroups, extras):
    args = make(ngroups=ngroups)
    if not extras:
        args.update(D=None, z=None, dt_bias=None)
        args["dt"] = args["dt"].abs()
    expected_state, expected_out = update_loop(**args, dt_softplus=extras)
    state = args.pop("state")
    out = selective_state_update(state, **args, dt_softplus=extras)
    assert out.shape == args["x"].shape
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), expected_state, rtol=1e-5, atol=1e-5)


def test_without_heads_matches_loop():
    args = make(nheads=1, ngroups=1)
    expected_state, expected_out = update_loop(**args, dt_softplus=True)
    flat = {k: v.squeeze(1) if k not in ("A", "D", "dt_bias") else v.squeeze(0) for k, v in args.items()}
    state = flat.pop("state")
    assert state.shape == (2, 3, 5) and flat["A"].shape == (3, 5) and flat["B"].shape == (2, 5)
    out = selective_state_update(state, **flat, dt_softplus=True)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.double(), expected_out.squeeze(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), expected_state.squeeze(1), rtol=1e-5, atol=1e-5)


def test_in_place_and_dtypes():
    args = make()
    state = args.pop("state").to(torch.bfloat16)
    ptr = state.data_ptr()
    before = state.clone()
    x = args.pop("x").to(torch.bfloat16)
    out = selective_state_update(state, x, **args)
    assert out.dtype == torch.bfloat16
    assert state.data_ptr() == ptr and state.dtype == torch.bfloat16
    assert not torch.equal(state, before)


def test_steps_equal_selective_scan():
    """Running the update over a sequence reproduces the scan (its outputs and last state)."""
    torch.manual_seed(3)
    batch, dim, dstate, seqlen = 2, 6, 4, 9
    u, delta, z = torch.randn(3, batch, dim, seqlen)
    A = -torch.rand(dim, dstate) - 0.5
    B, C = torch.randn(batch, dstate, seqlen), torch.randn(batch, dstate, seqlen)
    D, bias = torch.randn(dim), torch.rand(dim) - 2
    out, last = selective_scan(u, delta, A, B, C, D, z, bias, True, True, backend="reference")
    state = torch.zeros(batch, dim, dstate)
    steps = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                    dt_bias=bias, dt_softplus=True)
             for t in range(seqlen)]
    torch.testing.assert_close(torch.stack(steps, dim=-1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("state", torch.zeros(2, 3), r"state must have shape \(batch, dim, dstate\) or"),
    ("x", torch.zeros(2, 4, 2), r"x must have shape \(batch, nheads, dim\) = \(2, 4, 3\)"),
    ("dt", torch.zeros(2, 3), "dt must have shape"),
    ("A", torch.zeros(4, 5), r"A must have shape \(nheads, dim, dstate\) = \(4, 3, 5\)"),
    ("B", torch.zeros(2, 3, 5), "B has ngroups=3, which must divide nheads=4"),
    ("B", torch.zeros(2, 2, 6), r"B must have shape \(batch, ngroups, dstate\)"),
    ("C", torch.zeros(2, 1, 5), r"C must have shape \(batch, ngroups, dstate\) = \(2, 2, 5\)"),
    ("D", torch.zeros(4), r"D must have shape \(nheads, dim\) = \(4, 3\)"),
    ("z", torch.zeros(2, 4, 3, 1), "z must have shape"),
    ("dt_bias", torch.zeros(3), "dt_bias must have shape"),
    ("x", torch.zeros(2, 4, 3, dtype=torch.int64), "x must be a floating-point tensor"),
])
def test_errors(name, value, match):
    args = make()
    args[name] = value
    with pytest.raises(ValueError, match=match):
        selective_state_update(**args)

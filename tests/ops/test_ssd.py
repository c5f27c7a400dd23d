"""ssd_chunk_scan (chunked) against ssd_reference (token by token); the reference against selective_scan."""

import pytest
import torch
import torch.nn.functional as F

from medssm.ops import selective_scan, ssd_chunk_scan, ssd_reference


def make(batch=2, seqlen=37, nheads=4, headdim=3, ngroups=2, d_state=5, D_shape="heads", seed=0):
    """Realistic inputs: dt through softplus(dt + bias) lands around 0.01-0.1, A in -[1, 16]."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, seqlen, nheads, headdim, generator=g),
        dt=torch.randn(batch, seqlen, nheads, generator=g),
        A=-torch.empty(nheads).uniform_(1, 16, generator=g),
        B=torch.randn(batch, seqlen, ngroups, d_state, generator=g),
        C=torch.randn(batch, seqlen, ngroups, d_state, generator=g),
        D=torch.randn((nheads,) if D_shape == "heads" else (nheads, headdim), generator=g),
        z=torch.randn(batch, seqlen, nheads, headdim, generator=g),
        dt_bias=torch.rand(nheads, generator=g) - 4.0,
    )


GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def run_with_grads(fn, args, **kwargs):
    leaves = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in args.items()}
    out, final = fn(**leaves, dt_softplus=True, return_final_states=True, **kwargs)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=g)).sum()
    loss.backward()
    return out, final, {k: v.grad for k, v in leaves.items() if k in GRAD_NAMES}


@pytest.mark.parametrize(("seqlen", "chunk_size"), [(37, 16), (32, 16), (5, 16), (1, 16), (9, 1)])
@pytest.mark.parametrize(("ngroups", "D_shape"), [(1, "heads"), (2, "heads_by_dim"), (4, "heads")])
def test_chunked_matches_reference_forward_and_grads(seqlen, chunk_size, ngroups, D_shape):
    args = make(seqlen=seqlen, ngroups=ngroups, D_shape=D_shape)
    args["initial_states"] = torch.randn(2, 4, 3, 5)
    out, final, grads = run_with_grads(ssd_chunk_scan, args, chunk_size=chunk_size)
    out_ref, final_ref, grads_ref = run_with_grads(ssd_reference, args)
    assert out.shape == args["x"].shape and final.shape == (2, 4, 3, 5) and final.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, final_ref, rtol=1e-4, atol=1e-4)
    for name in GRAD_NAMES:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-3, atol=1e-3, msg=f"grad of {name}")


def test_reference_matches_selective_scan():
    """The SSD recurrence is Mamba's selective scan with A tied per head and B, C shared within a group."""
    args = make(seqlen=11, ngroups=2, D_shape="heads")
    x, dt, A, B, C, D, z, bias = (args[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"))
    batch, seqlen, nheads, headdim = x.shape
    d_state = B.shape[-1]
    out = ssd_reference(x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True)

    def channels(t):  # (batch, L, nheads, headdim) -> (batch, nheads * headdim, L)
        return t.flatten(2).transpose(1, 2)

    A_channels = A.repeat_interleave(headdim)[:, None].expand(-1, d_state)  # (nheads * headdim, d_state)
    scan = selective_scan(
        channels(x), channels(dt[..., None].expand_as(x)), A_channels, B.permute(0, 2, 3, 1),
        C.permute(0, 2, 3, 1), D=D.repeat_interleave(headdim), z=channels(z),
        delta_bias=bias.repeat_interleave(headdim), delta_softplus=True, backend="reference")
    torch.testing.assert_close(channels(out), scan, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 16])
def test_initial_and_final_states_continue_a_sequence(chunk_size):
    args = make(seqlen=23, D_shape="heads_by_dim")
    full, full_final = ssd_chunk_scan(**args, chunk_size=chunk_size, dt_softplus=True,
                                      return_final_states=True)
    head = {k: (v[:, :10] if v.dim() > 2 else v) for k, v in args.items()}
    tail = {k: (v[:, 10:] if v.dim() > 2 else v) for k, v in args.items()}
    out1, state = ssd_chunk_scan(**head, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    out2, final = ssd_chunk_scan(**tail, chunk_size=chunk_size, dt_softplus=True, initial_states=state,
                                 return_final_states=True)
    torch.testing.assert_close(torch.cat([out1, out2], dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, full_final, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    args = make(seqlen=32)
    strided = {k: v.transpose(1, -1).contiguous().transpose(1, -1) if v.dim() > 2 else v
               for k, v in args.items()}  # the same values with L as the innermost axis in memory
    assert not strided["x"].is_contiguous() and not strided["B"].is_contiguous()
    out = ssd_chunk_scan(**strided, chunk_size=16, dt_softplus=True)
    torch.testing.assert_close(out, ssd_chunk_scan(**args, chunk_size=16, dt_softplus=True))


def test_dt_limit_clamps_dt():
    args = make(seqlen=13)
    limit = (0.02, 0.05)
    out = ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True, dt_limit=limit)
    dt = F.softplus(args["dt"] + args["dt_bias"]).clamp(*limit)
    expected = ssd_reference(**{**args, "dt": dt, "dt_bias": None})
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ssd_chunk_scan(**args, chunk_size=4, dt_softplus=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_x_dtype(dtype):
    args = make(seqlen=19)
    low = {k: v.to(dtype) for k, v in args.items()}
    out, final = ssd_chunk_scan(**low, chunk_size=8, dt_softplus=True, return_final_states=True)
    assert out.dtype == dtype and final.dtype == torch.float32
    expected = ssd_reference(**{k: v.float() for k, v in low.items()}, dt_softplus=True)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_long_sequence_is_finite_and_exact():
    """At L=2048 the running sum of dt * A reaches about -1e3 (exp underflows), yet nothing is lost."""
    args = make(batch=1, seqlen=2048, nheads=2, headdim=4, ngroups=1, d_state=8)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    out = ssd_chunk_scan(**leaves, chunk_size=256, dt_softplus=True)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(v.grad).all() for v in leaves.values())
    cumulative = (F.softplus(args["dt"] + args["dt_bias"]) * args["A"]).sum(1)
    assert cumulative.max() < -100  # the regime where exp(cumsum) differences would give NaN or 0/0
    torch.testing.assert_close(out, ssd_reference(**args, dt_softplus=True), rtol=1e-4, atol=1e-4)


def test_large_dt_has_no_nan():
    args = make(seqlen=64)
    args["dt"] = args["dt"] + 30.0  # dt ~ 30, dt * A down to -480 per token
    out = ssd_chunk_scan(**args, chunk_size=64, dt_softplus=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ssd_reference(**args, dt_softplus=True), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("x", torch.zeros(2, 37, 12), r"x must have shape \(batch, L, nheads, headdim\)"),
    ("dt", torch.zeros(2, 37, 3), r"dt must have shape \(batch, L, nheads\) = \(2, 37, 4\)"),
    ("A", torch.zeros(4, 5), r"A must have shape \(nheads,\) = \(4,\)"),
    ("B", torch.zeros(2, 37, 3, 5), "B has ngroups=3, which must divide nheads=4"),
    ("C", torch.zeros(2, 37, 2, 6), "C must have shape"),
    ("D", torch.zeros(4, 2), r"D must have shape \(nheads,\) or \(nheads, headdim\)"),
    ("z", torch.zeros(2, 37, 4), "z must have shape"),
    ("dt_bias", torch.zeros(2), "dt_bias must have shape"),
    ("initial_states", torch.zeros(2, 4, 3), r"initial_states must have shape .* = \(2, 4, 3, 5\)"),
    ("chunk_size", 0, "chunk_size must be a positive int"),
])
def test_errors(name, value, match):
    args = make()
    args[name] = value
    with pytest.raises(ValueError, match=match):
        ssd_chunk_scan(**args)

"""causal_conv1d's "cpu" backend (numba) against the "torch" backend (F.conv1d), forward and backward.

Both backends get the same inputs and the same upstream gradient; we compare outputs and the gradients of
x, weight and bias over a grid of shapes, over strided layouts (the Mamba one included), in fp16/bf16, with
one or two threads, and on a long sequence. Also: "auto" picks "cpu" on CPU tensors, and bad requests raise.
"""

from __future__ import annotations

import pytest
import torch

from medssm.ops import causal_conv1d

pytest.importorskip("numba", reason='the "cpu" backend needs numba')

OUT_TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}  # weight/bias gradients are sums over batch and length


def leaf(t):
    """A leaf that requires grad and keeps t's strides (detach() is a view, not a copy)."""
    return None if t is None else t.detach().requires_grad_()


def forward_backward(x, weight, bias, activation, backend, grad_out):
    """Run one backend on fresh leaves; return the output and the gradients of x, weight and bias."""
    x, weight, bias = leaf(x), leaf(weight), leaf(bias)
    out = causal_conv1d(x, weight, bias, activation, backend=backend)
    out.backward(grad_out)
    grads = [x.grad, weight.grad, None if bias is None else bias.grad]
    return out.detach(), grads


def assert_backends_agree(x, weight, bias, activation, grad_out=None):
    """The "cpu" and "torch" backends give the same output and gradients (fp32 tolerances)."""
    if grad_out is None:
        grad_out = torch.randn(x.shape, dtype=x.dtype)
    out, grads = forward_backward(x, weight, bias, activation, "cpu", grad_out)
    ref, ref_grads = forward_backward(x, weight, bias, activation, "torch", grad_out)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, **OUT_TOL)
    for name, grad, ref_grad in zip(("x", "weight", "bias"), grads, ref_grads, strict=True):
        if ref_grad is None:
            assert grad is None, name
            continue
        assert grad.shape == ref_grad.shape and grad.dtype == ref_grad.dtype, name
        torch.testing.assert_close(grad, ref_grad, **GRAD_TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("seqlen", [1, 2, 5, 17, 263])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
def test_grid_matches_torch_backend(width, seqlen, activation, has_bias):
    torch.manual_seed(0)
    batch, dim = 2, 7
    x = torch.randn(batch, dim, seqlen)
    weight = torch.randn(dim, width)
    bias = torch.randn(dim) if has_bias else None
    assert_backends_agree(x, weight, bias, activation)


def contiguous(batch, dim, seqlen):
    return torch.randn(batch, dim, seqlen)


def mamba_layout(batch, dim, seqlen):
    """x as Mamba's in_proj hands it over: the first half of xz, channel axis contiguous, time stride 2 * dim."""
    xz = torch.randn(batch, seqlen, 2 * dim).transpose(1, 2)
    return xz[:, :dim]


def every_other_step(batch, dim, seqlen):
    return torch.randn(batch, dim, 2 * seqlen)[..., ::2]


@pytest.mark.parametrize("make_x", [contiguous, mamba_layout, every_other_step])
def test_layouts_match_torch_backend(make_x):
    torch.manual_seed(1)
    batch, dim, seqlen, width = 2, 33, 129, 4
    x = make_x(batch, dim, seqlen)
    assert x.shape == (batch, dim, seqlen)
    if make_x is not contiguous:
        assert not x.is_contiguous() and leaf(x).stride() == x.stride()  # the layout reaches the kernel
    assert_backends_agree(x, torch.randn(dim, width), torch.randn(dim), "silu")


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_low_precision(dtype, tol):
    """Both backends, given the same fp16/bf16 tensors, are close to the fp32 result on the upcast inputs."""
    torch.manual_seed(2)
    batch, dim, seqlen, width = 2, 7, 64, 4
    x = torch.randn(batch, dim, seqlen).to(dtype)
    weight = (0.5 * torch.randn(dim, width)).to(dtype)
    bias = torch.randn(dim).to(dtype)
    grad_out = torch.randn(batch, dim, seqlen).to(dtype)
    ref, ref_grads = forward_backward(x.float(), weight.float(), bias.float(), "silu", "torch", grad_out.float())
    for backend in ("cpu", "torch"):
        out, grads = forward_backward(x, weight, bias, "silu", backend, grad_out)
        assert out.dtype == dtype and out.shape == x.shape, backend
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol, msg=lambda m, b=backend: f"{b}: {m}")
        for name, grad, inp in zip(("x", "weight", "bias"), grads, (x, weight, bias), strict=True):
            assert grad.dtype == inp.dtype and grad.shape == inp.shape, f"{backend}: grad of {name}"
    # The cpu backend computes in fp32, so its gradients are the fp32 ones up to the final rounding
    # (relative to the gradient's size: weight and bias gradients are sums over batch and length).
    _, grads = forward_backward(x, weight, bias, "silu", "cpu", grad_out)
    for name, grad, ref_grad in zip(("x", "weight", "bias"), grads, ref_grads, strict=True):
        scale = ref_grad.abs().max().item()
        torch.testing.assert_close(
            grad.float(), ref_grad, rtol=tol, atol=tol * scale, msg=lambda m, name=name: f"cpu grad of {name}: {m}"
        )


def test_same_result_with_one_or_two_threads():
    torch.manual_seed(3)
    batch, dim, seqlen, width = 2, 40, 500, 4
    x, weight, bias = torch.randn(batch, dim, seqlen), torch.randn(dim, width), torch.randn(dim)
    grad_out = torch.randn(batch, dim, seqlen)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, grads = forward_backward(x, weight, bias, "silu", "cpu", grad_out)
            results.append([out, *grads])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # partial sums per thread: order may differ


@pytest.mark.parametrize("activation", [None, "silu", "swish"])
def test_auto_is_cpu_on_cpu_tensors(activation):
    torch.manual_seed(4)
    x, weight, bias = torch.randn(2, 7, 33), torch.randn(7, 4), torch.randn(7)
    auto = causal_conv1d(x, weight, bias, activation, backend="auto")
    cpu = causal_conv1d(x, weight, bias, activation, backend="cpu")
    torch.testing.assert_close(auto, cpu, rtol=0, atol=0)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation), cpu, rtol=0, atol=0)  # the default


@pytest.mark.parametrize("backend", ["numba", "CPU", "gpu", ""])
def test_unknown_backend_raises(backend):
    with pytest.raises(ValueError, match="backend"):
        causal_conv1d(torch.randn(2, 4, 6), torch.randn(4, 3), backend=backend)


def test_cpu_backend_refuses_non_cpu_tensors():
    """Meta tensors stand in for a GPU: the device check must come before any computation."""
    meta = torch.device("meta")
    x, weight, bias = torch.randn(2, 4, 6, device=meta), torch.randn(4, 3, device=meta), torch.randn(4, device=meta)
    with pytest.raises(ValueError, match="(?i)cpu"):
        causal_conv1d(x, weight, bias, "silu", backend="cpu")


def test_long_sequence_matches_torch_backend():
    """L = 100_000: weight and bias gradients are sums of 1e5 terms whose partial sums reach a few hundred,
    so fp32 rounding differs between backends by ~1e-5 of the largest gradient; a per-element rtol would
    flag entries that cancel to a small value. Tolerances are therefore relative to the gradient's scale."""
    torch.manual_seed(5)
    batch, dim, seqlen, width = 1, 8, 100_000, 4
    x, weight, bias = torch.randn(batch, dim, seqlen), torch.randn(dim, width), torch.randn(dim)
    grad_out = torch.randn(batch, dim, seqlen)
    out, grads = forward_backward(x, weight, bias, "silu", "cpu", grad_out)
    ref, ref_grads = forward_backward(x, weight, bias, "silu", "torch", grad_out)
    assert torch.isfinite(out).all() and out.shape == x.shape
    torch.testing.assert_close(out, ref, **OUT_TOL)
    for name, grad, ref_grad in zip(("x", "weight", "bias"), grads, ref_grads, strict=True):
        assert torch.isfinite(grad).all(), name
        atol = max(1e-4, 1e-4 * ref_grad.abs().max().item())  # one missing or wrong term would be ~1 off
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def test_widths_over_four_use_torch_under_auto_and_are_refused_by_cpu():
    torch.manual_seed(6)
    x, weight = torch.randn(2, 5, 20), torch.randn(5, 6)
    torch.testing.assert_close(causal_conv1d(x, weight), causal_conv1d(x, weight, backend="torch"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="widths up to 4"):
        causal_conv1d(x, weight, backend="cpu")


def test_mamba_layout_is_read_in_place():
    """The kernels read Mamba's channel-contiguous slice of xz where it lies (no copy)."""
    from medssm.ops.conv_cpu import _rows

    xz = torch.randn(2, 9, 2 * 5).transpose(1, 2)
    rows = _rows(xz[:, :5])
    assert rows.shape == (2, 9, 10) and rows.ctypes.data == xz.data_ptr()
    assert _rows(torch.randn(2, 5, 9)).shape == (2, 9, 5)  # time-contiguous: a channels-last copy

"""What is specific to the "cpu" backend: long sequences, memory, threads, the numba cache folder."""

from __future__ import annotations

import math
import os

import pytest
import torch

from medssm.bench.scan import measure_memory, memory_supported
from medssm.ops import _numba_env as numba_env
from medssm.ops import selective_scan


def mamba_like(batch: int, dim: int, d_state: int, seqlen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """mamba_ssm-style initialisation: A = -(1..N), softplus(delta_bias) log-uniform in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": torch.randn(batch, dim, seqlen, generator=gen),
        "delta": torch.randn(batch, dim, seqlen, generator=gen),
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, d_state, seqlen, generator=gen),
        "C": torch.randn(batch, d_state, seqlen, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, seqlen, generator=gen),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def scan(x: dict[str, torch.Tensor], **kwargs):
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                          delta_bias=x["delta_bias"], delta_softplus=True, backend="cpu", **kwargs)


def test_million_steps_stay_finite_forward_and_backward():
    x = {k: v.requires_grad_() for k, v in mamba_like(1, 4, 16, 1_000_000).items()}
    out, last = scan(x, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    out.sum().backward()
    for name, leaf in x.items():
        assert torch.isfinite(leaf.grad).all(), name


def test_matches_reference_after_a_long_prefix():
    """The recurrence stays exact over many chunks: compare the tail of a long scan with the reference."""
    x = mamba_like(1, 5, 16, 3000)
    out, last = scan(x, return_last_state=True)
    ref, ref_last = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                                   delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True,
                                   backend="reference")
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)


@pytest.mark.skipif(not memory_supported(), reason="needs Linux /proc/self/clear_refs (resident-set peak)")
def test_forward_extra_memory_is_at_most_twice_the_output():
    """The issue's budget at (1, 96, 16, 16384), measured in a fresh process as `medssm bench scan` does."""
    extra_mb = measure_memory("cpu", (1, 96, 16, 16384), threads=2)["forward_mb"]
    out_mb = 4 * 96 * 16384 / 2**20
    assert extra_mb <= 2 * out_mb, f"forward used {extra_mb / out_mb:.2f}x the output's size"


def test_same_result_with_one_or_two_threads_and_run_to_run():
    x = {k: v.requires_grad_() for k, v in mamba_like(2, 70, 16, 300).items()}
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            for v in x.values():
                v.grad = None
            out = scan(x)
            out.square().sum().backward()
            results.append([out.detach().clone()] + [v.grad.clone() for v in x.values()])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # partial sums per thread: order differs
    for a, b in zip(results[1], results[2], strict=True):
        assert torch.equal(a, b)  # same threads: bitwise reproducible


def test_low_precision_inputs_keep_their_dtype_in_outputs_and_gradients():
    x = mamba_like(1, 8, 4, 50)
    x = {k: (v.bfloat16() if k in ("u", "delta", "z", "B", "C") else v).requires_grad_() for k, v in x.items()}
    out = scan(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for name, leaf in x.items():
        assert leaf.grad.dtype == leaf.dtype, name


def test_cache_dir_falls_back_to_a_writable_temporary_folder(monkeypatch, tmp_path):
    """A read-only package folder (site-packages, containers) must not break import: use a temp folder."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", "")  # recorded, so the variable is restored after the test
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setattr(numba_env, "_writable", lambda folder: str(folder).startswith(str(tmp_path)))
    monkeypatch.setattr(numba_env.tempfile, "gettempdir", lambda: str(tmp_path))
    numba_env._choose_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"].startswith(str(tmp_path))


def test_unavailable_backend_is_an_error_not_a_fallback():
    x = mamba_like(1, 2, 2, 3)
    with pytest.raises(ValueError, match="cannot run on meta"):
        selective_scan(*(x[k].to("meta") for k in ("u", "delta", "A", "B", "C")), backend="cpu")


@pytest.mark.parametrize("output_weight", [0.0, 0.5, None])  # None: the output is not in the loss at all
def test_gradient_flows_through_the_last_state_as_in_the_reference(output_weight):
    x = mamba_like(2, 6, 4, 150)
    grads = {}
    for backend in ("reference", "cpu"):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        out, last = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                                   z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True,
                                   return_last_state=True, backend=backend)
        loss = last.square().sum()
        if output_weight is not None:
            loss = loss + output_weight * out.sum()
        loss.backward()
        grads[backend] = {k: v.grad for k, v in leaves.items()}
    for name, want in grads["reference"].items():
        got = grads["cpu"][name]
        if want is None:  # the last state does not depend on C, D or z: autograd gives None, the kernel zeros
            want = torch.zeros_like(got)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_works_in_a_forked_child_after_the_parent_used_threads():
    """A DataLoader worker or multiprocessing child inherits the parent's thread pool without its threads."""
    import multiprocessing

    x = mamba_like(1, 70, 4, 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = scan(x)  # the parent now holds a thread pool
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(scan, (x,)).get(timeout=60)  # without a fresh pool the child hangs
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, expected)


def test_transposed_inputs_are_read_in_place_and_match_contiguous_copies():
    """Mamba's delta and z are (b, L, d) tensors seen as (b, d, L): the kernels read them without a copy."""
    from medssm.ops import scan_cpu

    x = mamba_like(2, 40, 4, 37)
    laid_out = {k: x[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("u", "delta", "z")}
    assert all(t.stride(1) == 1 for t in laid_out.values())
    plan = scan_cpu.ScanPlan(laid_out["u"], laid_out["delta"], x["A"], x["B"], x["C"], x["D"], laid_out["z"],
                             x["delta_bias"], True)
    assert plan.args[0].ctypes.data == laid_out["u"].data_ptr()  # a view, not a copy
    leaves = [{k: v.detach().clone().requires_grad_(True) for k, v in d.items()} for d in (x, {**x, **laid_out})]
    grad = torch.randn(2, 40, 37)
    outs = [scan(leaf) for leaf in leaves]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for out in outs:
        out.backward(grad.transpose(1, 2).contiguous().transpose(1, 2))  # a channels-last output gradient too
    for name in ("u", "delta", "z", "A", "B", "C", "D", "delta_bias"):
        torch.testing.assert_close(leaves[1][name].grad, leaves[0][name].grad, rtol=0, atol=0)
    # the output follows u's layout and the gradients of u, delta and z their inputs' (no transposing copies)
    assert outs[0].is_contiguous() and outs[1].stride(1) == 1
    for name in ("u", "delta", "z"):
        assert leaves[0][name].grad.is_contiguous() and leaves[1][name].grad.stride(1) == 1, name


def test_mixed_layouts_keep_each_gradient_in_its_input_layout():
    x = mamba_like(1, 24, 4, 20)
    x["delta"] = x["delta"].transpose(1, 2).contiguous().transpose(1, 2)  # only delta channels last
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    out = scan(leaves)
    out.backward(torch.randn(1, 24, 20))
    assert out.is_contiguous() and leaves["u"].grad.is_contiguous() and leaves["z"].grad.is_contiguous()
    assert leaves["delta"].grad.stride(1) == 1
    ref = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"], delta_bias=x["delta_bias"],
                         delta_softplus=True, backend="reference")
    torch.testing.assert_close(out.detach(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("dim", "threads", "width"), [(96, 2, 16), (192, 2, 32), (48, 2, 32), (96, 1, 32), (4, 2, 16)])
def test_blocks_narrow_only_when_that_balances_the_threads(dim, threads, width):
    from medssm.ops.cpu.workers import block_width

    assert block_width(1, dim, dim, threads) == width


@pytest.mark.parametrize("name", ["u", "delta", "z"])
def test_backward_refuses_inputs_changed_in_place_after_the_forward(name):
    """The kernels read the inputs' memory in place (no copy), so an in-place change before the backward
    would silently change the gradients; autograd's version check must catch it, as for torch's own ops."""
    x = mamba_like(1, 8, 4, 20)
    leaves = {k: v.clone().requires_grad_(k == "A") for k, v in x.items()}
    out = scan(leaves)
    with torch.no_grad():
        leaves[name].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("width", [32, 16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dim", [35, 48])  # 48: channels-last rows 64-byte aligned (streaming stores)
def test_gradients_match_the_reference_around_segment_and_tile_edges(channels_last, dim, width, monkeypatch):
    """The backward works a checkpoint segment at a time, loading whole 16-step tiles and the rest step by
    step: lengths just below, at and past a segment, and a partial segment with whole tiles and a remainder;
    with the blocks of either width (each its own compiled kernel)."""
    from medssm.ops import scan_cpu
    from medssm.ops.cpu.sizes import LANES, SEGMENT, TILE

    assert width in (LANES, TILE)
    monkeypatch.setattr(scan_cpu, "block_width", lambda *args: width)
    seg, tile = SEGMENT, TILE
    for seqlen in (seg - 1, seg, seg + 1, 2 * seg + tile + 3):
        x = mamba_like(1, dim, 4, seqlen, seed=seqlen)  # a whole 32-lane block and a narrower one
        if channels_last:
            x.update({k: x[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("u", "delta", "z")})
        grads = []
        for backend in ("cpu", "reference"):
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
            out, last = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                       leaves["D"], z=leaves["z"], delta_bias=leaves["delta_bias"],
                                       delta_softplus=True, return_last_state=True, backend=backend)
            gen = torch.Generator().manual_seed(1)
            (out * torch.randn(out.shape, generator=gen)).sum().add((last * 0.3).sum()).backward()
            grads.append({k: v.grad for k, v in leaves.items()})
        for name in x:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-3,
                                       msg=lambda m, n=name, s=seqlen: f"{n} at L={s}: {m}")


@pytest.mark.parametrize("fixed_bc", [False, True])
@pytest.mark.parametrize("d_state", [3, 5])
def test_odd_state_counts_match_the_reference(d_state, fixed_bc):
    """The backward works two states at a time; with N odd the last pair's second state is a masked copy of
    the first, which must neither change the gradients nor receive any (the last state's gradient included)."""
    x = mamba_like(2, 40, d_state, 150, seed=d_state)
    if fixed_bc:
        gen = torch.Generator().manual_seed(7)
        x["B"], x["C"] = torch.randn(2, 40, d_state, generator=gen).unbind(0)
    grads = []
    for backend in ("cpu", "reference"):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
        out, last = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                                   z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True,
                                   return_last_state=True, backend=backend)
        gen = torch.Generator().manual_seed(1)
        (out * torch.randn(out.shape, generator=gen)).sum().add((last * torch.randn(last.shape, generator=gen)).sum()
                                                              ).backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in x:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-3,
                                   msg=lambda m, n=name: f"{n}: {m}")

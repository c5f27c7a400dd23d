"""`medssm bench openmp`: what torch's OpenMP spin-wait costs the cpu scan, and torch itself.

After each parallel op, libgomp's worker threads busy-wait GOMP_SPINCOUNT spins before sleeping. On a
machine with few cores a spinning worker takes a core from the cpu scan's threads. This times, under the
spin setting in effect (see medssm/__init__.py), the cpu scan forward right after a parallel torch op and
back to back with itself, and a small DynUNet training step (torch alone). (Not after a pause: after idling
even 20 ms the first calls on this VM were slower for other reasons.) Compare runs with
``GOMP_SPINCOUNT=300000`` (libgomp's default) and without it (medssm's 30000).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .. import openmp_spin_note
from .scan import make_inputs


def _median_ms(setup: Callable[[], object], fn: Callable[[], object], repeats: int) -> float:
    """Median time of ``fn`` in ms, each call right after ``setup`` (not timed)."""
    fn()
    times = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def run(shape: tuple[int, int, int, int] = (1, 192, 16, 4096), repeats: int = 20) -> dict[str, float]:
    """Print and return the three medians (ms): scan after a parallel op, scan back to back, DynUNet step."""
    from monai.networks.nets import DynUNet

    from ..ops import selective_scan

    x = make_inputs(*shape)
    big = torch.rand(1 << 20)
    out = torch.empty_like(big)

    def scan() -> None:
        with torch.no_grad():
            selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                           delta_bias=x["delta_bias"], delta_softplus=True, backend="cpu")

    def parallel_op() -> None:
        torch.exp(big, out=out)

    torch.manual_seed(0)
    net = DynUNet(2, 1, 2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2])
    opt = torch.optim.AdamW(net.parameters())
    images, labels = torch.randn(4, 1, 96, 96), torch.randint(0, 2, (4, 96, 96))

    def train_step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        opt.step()

    result = {"scan_after_parallel_op_ms": _median_ms(parallel_op, scan, repeats),
              "scan_back_to_back_ms": _median_ms(lambda: None, scan, repeats),
              "dynunet_step_ms": _median_ms(lambda: None, train_step, max(3, repeats // 2))}
    print(f"medssm bench openmp: {openmp_spin_note()}, {torch.get_num_threads()} threads, scan shape {shape}")
    print(f"cpu scan forward right after a parallel torch op: {result['scan_after_parallel_op_ms']:.2f} ms")
    print(f"cpu scan forward back to back:                    {result['scan_back_to_back_ms']:.2f} ms")
    print(f"DynUNet training step (4 x 96x96, torch only):    {result['dynunet_step_ms']:.1f} ms")
    return result

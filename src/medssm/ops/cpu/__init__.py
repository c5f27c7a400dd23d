"""The numba kernels of the "cpu" backends and what they share.

- sizes.py: block width, chunk and tile lengths, checkpoint spacing, prefetch distance.
- simd.py: vectorisable exp/sigmoid/softplus and the LLVM intrinsics (tile transposes, streaming stores,
  prefetch, row sums) that numba has no vector type for.
- chunks.py: moving a block's (time, lane) buffers in and out of (b, d, L) tensors.
- forward.py, backward.py: the selective scan's forward and backward kernels.
- workers.py: the thread pool that runs a kernel over job ranges, and the scan's job lists.

The host side (argument layouts, the autograd Function) is ``medssm.ops.scan_cpu``; the causal conv's
kernels are in ``medssm.ops.conv_cpu``. The measurements behind the choices the comments give are in
docs/benchmarks.md.
"""

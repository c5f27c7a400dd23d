"""Compile the triton backends' kernels to GPU machine code without a GPU (a script the tests run).

``python triton_compile_check.py [--all] [--arch 90] [--report]`` compiles every kernel of
medssm.ops.triton_kernels for the given CUDA architectures (Triton ships ptxas) with the flags Mamba uses
(fp32, fp16 and bf16 inputs), or with ``--all`` also every flag combination the host side can pass, and
prints the registers and spills of each (``--report``). Exits non-zero on the first kernel that does not
compile. Run it in a process where triton is not in interpreter mode (TRITON_INTERPRET unset).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from medssm.ops import triton_kernels as K

SCAN_FLAGS = ("B_FIXED", "C_FIXED", "HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS")
MAMBA = {"B_FIXED": False, "C_FIXED": False, "HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}


def signature(fn, constexprs: dict, dtype: str) -> dict:
    """Pointers named *_ptr in ``dtype`` (fp32 for the fp32 state, partial sums and checkpoints), ints i32."""
    fp32 = ("last_ptr", "ckpt_ptr", "ws_ptr", "glast_ptr", "dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr", "dbias_ptr",
            "A_ptr", "D_ptr", "bias_ptr", "state_ptr")
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in fp32 else f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, constexprs: dict, arch: int, dtype: str, report: bool) -> None:
    src = ASTSource(fn, signature(fn, constexprs, dtype), constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    if report:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
            usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        line = next((x.strip() for x in usage.splitlines() if "REG" in x), usage.strip())
        print(f"sm_{arch} {fn.__name__} {dtype} {constexprs}: {line}", flush=True)


def combinations(all_flags: bool):
    if not all_flags:
        yield MAMBA
        yield {**MAMBA, "B_FIXED": True, "C_FIXED": True, "HAS_Z": False}
        return
    for values in itertools.product((False, True), repeat=len(SCAN_FLAGS)):
        yield dict(zip(SCAN_FLAGS, values, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="CUDA compute capability x 10 (default 80, 90)")
    parser.add_argument("--all", action="store_true", help="every flag combination (fp32 inputs)")
    parser.add_argument("--report", action="store_true", help="print registers and spills per kernel")
    args = parser.parse_args(argv)
    sizes = {"CHUNK": 32, "BLOCK_D": 16, "BLOCK_N": 16}
    # every flag combination in fp32; the half-precision inputs with Mamba's flags
    variants = [(flags, "fp32") for flags in combinations(args.all)] + [(MAMBA, "fp16"), (MAMBA, "bf16")]
    for arch in args.arch or (80, 90):
        for flags, dtype in variants:
            compile_one(K.scan_fwd_kernel, {**flags, "SAVE": dtype == "fp32", **sizes}, arch, dtype, args.report)
            compile_one(K.scan_bwd_kernel, {**flags, "HAS_GLAST": True, **sizes}, arch, dtype, args.report)
        state_flags = {k: MAMBA[k] for k in ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS")}
        compile_one(K.state_update_kernel, {**state_flags, "BLOCK_D": 16, "BLOCK_N": 16}, arch, "fp32", args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `medssm` command line."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--shape expects four positive integers b,d,N,L (got {text!r})")
    return values  # type: ignore[return-value]


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, threads and the selective-scan backends available on each device."""
    import medssm
    from medssm.ops import available_backends

    print(f"medssm {medssm.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; cuda {torch.cuda.is_available()}")
    try:
        import numba

        import medssm.ops.scan_cpu  # noqa: F401  (sets NUMBA_CACHE_DIR when the default is not writable)

        cache = os.environ.get("NUMBA_CACHE_DIR") or "(next to the sources)"
        print(f"numba {numba.__version__}; kernel cache {cache}")
    except ImportError:
        print("numba: not installed (no 'cpu' backend)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        names = available_backends(device)
        print(f"selective_scan backends on {device}: {', '.join(names)} (auto -> {names[0]})")
    return 0


def cmd_bench_scan(args: argparse.Namespace) -> int:
    from medssm.bench import scan

    out = args.out or Path("medssm-bench") / time.strftime("scan-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: --out {out} exists and is not empty; pass --overwrite to replace its files",
              file=sys.stderr)
        return 2
    scan.run(shapes=args.shape or scan.DEFAULT_SHAPES, backends=args.backend, repeats=args.repeats,
             threads=args.threads, out_dir=out, memory=not args.no_memory, compile_time=not args.no_compile,
             scaling=not args.no_scaling)
    return 0


def cmd_bench_mixer(args: argparse.Namespace) -> int:
    from medssm.bench import mixer

    mixer.run(route=args.route, d_model=args.d_model, d_state=args.d_state, batch=args.batch,
              repeats=args.repeats, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medssm", description="Mamba models for medical images and signals")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (e.g. backend choices)")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, threads and available scan backends")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    scan = bench_sub.add_parser("scan", help="selective-scan backends: time, memory, machine bound")
    scan.add_argument("--shape", type=_shape, action="append",
                      help="b,d,N,L (repeatable); default: the four shapes of the README table")
    scan.add_argument("--backend", action="append", choices=["reference", "torch", "cpu", "mambapy"],
                      help="repeatable; default: every available backend (+ mambapy when installed)")
    scan.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median)")
    scan.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: torch's)")
    scan.add_argument("--out", type=Path, default=None, help="folder for scan.json and scan_vs_length.png")
    scan.add_argument("--overwrite", action="store_true", help="replace files in an existing --out folder")
    scan.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    scan.add_argument("--no-compile", action="store_true", help="skip the numba compile-time measurement")
    scan.add_argument("--no-scaling", action="store_true", help="skip the time-vs-L series and plot")
    scan.set_defaults(func=cmd_bench_scan)

    mix = bench_sub.add_parser("mixer", help="multi-route vision mixer: routing vs scan time, 2D and 3D")
    mix.add_argument("--route", default="cross", help="scan route name (default: cross)")
    mix.add_argument("--d-model", type=int, default=48)
    mix.add_argument("--d-state", type=int, default=16)
    mix.add_argument("--batch", type=int, default=1)
    mix.add_argument("--repeats", type=int, default=10)
    mix.add_argument("--threads", type=int, default=None)
    mix.set_defaults(func=cmd_bench_mixer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

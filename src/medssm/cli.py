"""The `medssm` command line.

Nothing that imports torch is imported at module level: :func:`main` first calls :func:`medssm.tune_process`,
whose OpenMP setting only takes effect before torch loads, so each command imports what it needs itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import medssm


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--shape expects four positive integers b,d,N,L (got {text!r})")
    return values  # type: ignore[return-value]


def _sides(text: str) -> list[int]:
    """Comma-separated positive integers (sizes, sides, a sliding-window roi)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 32,64 (got {text!r})")
    return values


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, threads and the selective-scan backends available on each device."""
    import torch

    from medssm.ops import available_backends

    print(f"medssm {medssm.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; cuda {torch.cuda.is_available()}")
    print(f"OpenMP: {medssm.openmp_spin_note()}")
    print(medssm.malloc_note())
    try:
        import numba

        from medssm.ops import scan_cpu  # noqa: F401  (sets NUMBA_CACHE_DIR when the default is not writable)

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

    if args.device == "cuda" or {"triton", "mamba_ssm"} & set(args.backend or ()):
        return _bench_scan_cuda(args)
    out = args.out or Path("medssm-bench") / time.strftime("scan-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: --out {out} exists and is not empty; pass --overwrite to replace its files",
              file=sys.stderr)
        return 2
    scan.run(shapes=args.shape or scan.DEFAULT_SHAPES, backends=args.backend, repeats=args.repeats,
             threads=args.threads, out_dir=out, memory=not args.no_memory, compile_time=not args.no_compile,
             scaling=not args.no_scaling, split=args.split)
    return 0


def _bench_scan_cuda(args: argparse.Namespace) -> int:
    """`medssm bench scan --device cuda`: the GPU table (medssm.bench.scan_gpu)."""
    import torch

    if args.device != "cuda":
        print("error: --backend triton and mamba_ssm run with --device cuda", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        from medssm.bench.scan_gpu import NO_GPU

        print(f"error: {NO_GPU}", file=sys.stderr)
        return 2
    if {"cpu", "mambapy"} & set(args.backend or ()):
        print("error: --device cuda times triton, torch, reference and mamba_ssm (not cpu or mambapy)",
              file=sys.stderr)
        return 2
    from medssm.bench import scan_gpu
    from medssm.engine.files import check_output

    out = check_output(args.out or Path("medssm-bench") / time.strftime("scan-cuda-%Y%m%d-%H%M%S"), args.overwrite,
                       "--out folder")
    scan_gpu.run_cuda(shapes=args.shape or scan_gpu.GPU_SHAPES, backends=args.backend, repeats=args.repeats,
                      out_dir=out)
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    from medssm.bench import models
    from medssm.engine.files import check_output

    out = check_output(args.out or Path("medssm-bench") / time.strftime("models-%Y%m%d-%H%M%S"), args.overwrite,
                       "--out folder")
    default_2d = models.RESTORATION_SIZES_2D if args.task == "restoration" else models.DEFAULT_SIZES[2]
    sizes = {2: tuple(args.sizes_2d or default_2d), 3: tuple(args.sizes_3d or models.DEFAULT_SIZES[3])}
    train_sizes: tuple[int, ...] = ()
    if args.train_step:
        train_sizes = tuple(args.train_sizes or sorted({min(sizes[3]), models.TRAIN_SIDE}))
    classifier_sizes = tuple(args.classifier_sizes or (models.CLASSIFIER_SIDE,)) if args.classifier_step else ()
    models.run(models=args.model, spatial_dims=args.spatial_dims, sizes=sizes, repeats=args.repeats,
               max_seconds=args.max_seconds, train_sizes=train_sizes, threads=args.threads, out_dir=out,
               classifier_sizes=classifier_sizes, task=args.task)
    return 0


def cmd_bench_mil(args: argparse.Namespace) -> int:
    from medssm.bench import mil
    from medssm.engine.files import check_output

    out = check_output(args.out or Path("medssm-bench") / time.strftime("mil-%Y%m%d-%H%M%S"), args.overwrite,
                       "--out folder")
    mil.run(variants=args.model, sizes=args.sizes, repeats=args.repeats, threads=args.threads,
            max_seconds=args.max_seconds, out_dir=out)
    return 0


def cmd_bench_openmp(args: argparse.Namespace) -> int:
    from medssm.bench import openmp

    openmp.run(repeats=args.repeats)
    return 0


def cmd_bench_layer(args: argparse.Namespace) -> int:
    from medssm.bench import layer

    layer.run(d_model=args.d_model, d_state=args.d_state, batch=args.batch, seqlen=args.length,
              repeats=args.repeats, threads=args.threads)
    return 0


def cmd_bench_mixer(args: argparse.Namespace) -> int:
    from medssm.bench import mixer

    mixer.run(route=args.route, d_model=args.d_model, d_state=args.d_state, batch=args.batch,
              repeats=args.repeats, threads=args.threads)
    return 0


def cmd_bench_ehr(args: argparse.Namespace) -> int:
    from medssm.bench import ehr
    from medssm.engine.files import check_output

    out = check_output(args.out or Path("medssm-bench") / time.strftime("ehr-%Y%m%d-%H%M%S"), args.overwrite,
                       "--out folder")
    ehr.run(models=tuple(args.model or ehr.DEFAULT_MODELS), lengths=tuple(args.lengths or ehr.DEFAULT_LENGTHS),
            d_model=args.d_model, depth=args.depth, repeats=args.repeats, max_seconds=args.max_seconds,
            max_memory_gb=args.max_memory_gb, threads=args.threads, out_dir=out)
    return 0


def cmd_fhir_export(args: argparse.Namespace) -> int:
    from medssm.data.ehr.fhir import load_mapping, write_fhir_export
    from medssm.engine.files import check_output

    out = check_output(args.out, args.overwrite, "--out folder")
    written = write_fhir_export(args.source, out, sets=args.set, fmt=args.format, mapping=load_mapping(args.mapping))
    print("; ".join(f"{name}: {count} stays" for name, count in written.items()) + f" written to {out}")
    return 0


def cmd_ehr_baseline(args: argparse.Namespace) -> int:
    from medssm.engine.config import load_config
    from medssm.engine.ehr_baseline import run_boosted_trees

    config = load_config(resolve_config(args.config), args.overrides)
    result = run_boosted_trees(config, args.out, overwrite=args.overwrite, max_iter=args.max_iter,
                               learning_rate=args.learning_rate, seed=args.seed)
    test = result["test"]
    print(f"boosted trees ({result['iterations']} iterations): test AUROC {test['auc']:.4f}, AUPRC "
          f"{test['auprc']:.4f}, Brier {test['brier']:.4f}; report {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medssm.engine.config import load_config
    from medssm.engine.trainer import train

    if args.resume and (args.config or args.overrides):
        raise ValueError("--resume continues a run with its saved config; do not pass --config or overrides")
    config = None if args.resume else load_config(resolve_config(args.config), args.overrides)
    summary = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                    device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        print(f"finished at step {summary['step']}: best {summary['best_metric']} "
              f"{best if best is None else round(best, 4)} at step {summary['best_step']}; run folder {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medssm.engine.evaluate import evaluate

    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either --checkpoint (a trained run) or --model with --config (a classical method, "
                         "e.g. --model bm3d --config duke_oct)")
    if args.model is not None and (args.config is None or args.out is None):
        raise ValueError(f"--model {args.model} needs --config (the data) and --out (the report folder)")
    if args.checkpoint is not None and len(args.checkpoint) > 1 and args.out is None:
        raise ValueError("several --checkpoint values (an ensemble): give --out for the report")
    overrides = list(args.overrides)
    if args.tta:
        overrides.append("inference.tta=true")
    if args.roi_size:
        overrides.append(f"inference.roi_size={list(args.roi_size)}")
    out = args.out or Path(args.checkpoint[0]) / f"eval-{args.split or 'test'}"
    metrics = evaluate(args.checkpoint, out, split=args.split, overrides=overrides, overwrite=args.overwrite,
                       device=args.device or "auto", progress=not args.no_progress, method=args.model,
                       config=resolve_config(args.config) if args.model else None, all_images=args.all_images)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.4f}")
    print(f"report: {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from medssm.engine.predict import predict_checkpoint

    if args.stream:  # a long WFDB record through a causal model, chunk by chunk (medssm.engine.stream)
        from medssm.engine.setup import resolve_run_checkpoint
        from medssm.engine.stream import stream_record

        if len(args.checkpoint) != 1:
            raise ValueError(f"--stream runs one checkpoint, got {len(args.checkpoint)}")
        record = args.input.with_suffix("") if args.input.suffix in (".hea", ".dat") else args.input
        summary = stream_record(resolve_run_checkpoint(args.checkpoint[0]), record, args.output,
                                window_seconds=args.window_seconds, chunk_seconds=args.chunk_seconds,
                                max_seconds=args.max_seconds)
        print("  ".join(f"{key} {value:.4g}" for key, value in summary.items()))
        print(f"wrote {summary['windows']} window prediction(s) to {args.output}")
        return 0
    written = predict_checkpoint(args.checkpoint, args.input, args.output,
                                 probabilities=args.probabilities, overwrite=args.overwrite, tta=args.tta,
                                 roi_size=args.roi_size, continue_on_error=args.continue_on_error,
                                 skip_existing=args.skip_existing, device=args.device or "auto",
                                 progress=not args.no_progress)
    print(f"wrote {len(written)} file(s) under {args.output}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from medssm.engine.config import load_config
    from medssm.engine.cv import cross_validate

    config = load_config(resolve_config(args.config), args.overrides)
    result = cross_validate(config, args.out, args.folds, fold=args.fold, overwrite=args.overwrite,
                            progress=not args.no_progress, device=args.device,
                            echo=lambda line: print(line, flush=True))
    if result is not None:
        width = max(len(k) for k in result["mean"])
        for key, mean in result["mean"].items():
            print(f"{key:<{width}}  {mean:.4f} ± {result['std'][key]:.4f} (mean ± std over {args.folds} folds)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medssm.models import count_flops, count_parameters, create_model, get_entry, list_models

    names = list_models(args.pattern, task=args.task)
    if not names:
        print(f"no registered model matches {args.pattern!r}")
        return 1
    counts = args.counts or args.markdown  # building every model takes seconds: only when asked
    rows = []  # (name, task, dims, params, GFLOPs, input size, summary): the same columns in both formats
    for name in names:
        entry = get_entry(name)
        dims = entry.variants[-1] if args.spatial_dims is None else args.spatial_dims
        if dims not in entry.variants:
            continue
        params = flops = "-"
        if counts:
            model = create_model(name, **entry.model_kwargs(dims))
            params = f"{count_parameters(model):,}"
            flops = f"{count_flops(model, entry.example_input(dims)) / 1e9:.3f}"
        size = "x".join(str(n) for n in entry.input_size[dims])
        size = f"{size} ({dims}D)" if dims is not None else f"{size} (length)"
        rows.append((name, entry.task, ",".join(str(d) for d in entry.spatial_dims) or "-", params, flops, size,
                     entry.summary))
    if args.markdown:  # the README's model table (tests/test_docs.py checks it against this output)
        print("| model | task | spatial dims | parameters | GFLOPs | input | summary |")
        print("|---|---|---|--:|--:|---|---|")
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        return 0
    print(f"{'model':<28} {'task':<15} {'dims':<6} {'params':>10} {'GFLOPs':>8}  input (per spatial_dims)")
    for name, task, dims_text, params, flops, size, summary in rows:
        print(f"{name:<28} {task:<15} {dims_text:<6} {params:>10} {flops:>8}  {size}  {summary}")
    if not counts:
        print("(parameters and FLOPs: medssm models --counts)")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from medssm.engine.config_docs import markdown, plain

    print(markdown() if args.markdown else plain(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medssm.engine.demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, steps=args.steps, progress=not args.no_progress)
    return 0


def resolve_config(name: str | None) -> Path | None:
    """A config path, or the name of a config shipped with medssm (``medssm train --config demo``)."""
    if name is None:
        return None
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    builtin = Path(__file__).parent / "configs" / f"{name}.yaml"
    if builtin.is_file():
        return builtin
    shipped = sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))
    raise FileNotFoundError(f"--config {name!r} is neither a file nor a shipped config ({', '.join(shipped)})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``func``, the ``cmd_*`` function that runs it."""
    parser = argparse.ArgumentParser(prog="medssm", description="Mamba models for medical images and signals")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (e.g. backend choices)")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, threads and available scan backends")
    info.set_defaults(func=cmd_info)
    _add_bench(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_cv(sub)
    _add_models(sub)
    _add_demo(sub)
    _add_configs(sub)
    _add_fhir(sub)
    _add_ehr_baseline(sub)
    return parser


def _add_layer_size_args(parser: argparse.ArgumentParser, d_model: int) -> None:
    """The layer benchmarks' shared options: the layer's width and state, batch, repeats, threads."""
    parser.add_argument("--d-model", type=int, default=d_model)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    scan = bench_sub.add_parser("scan", help="selective-scan backends: time, memory, machine bound")
    scan.add_argument("--shape", type=_shape, action="append",
                      help="b,d,N,L (repeatable); default: the four shapes of docs/benchmarks.md")
    scan.add_argument("--backend", action="append",
                      choices=["reference", "torch", "cpu", "mambapy", "triton", "mamba_ssm"],
                      help="repeatable; default: every available backend (+ mambapy when installed; on cuda: "
                           "triton, torch + mamba_ssm when installed)")
    scan.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                      help="cuda: time the GPU backends against the GPU's copy bandwidth (medssm.bench.scan_gpu)")
    scan.add_argument("--repeats", type=int, default=10,
                      help="timed repeats per measurement (median), after 0.2 s of warm-up")
    scan.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: torch's)")
    scan.add_argument("--out", type=Path, default=None, help="folder for scan.json and scan_vs_length.png")
    scan.add_argument("--overwrite", action="store_true", help="replace files in an existing --out folder")
    scan.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    scan.add_argument("--no-compile", action="store_true", help="skip the numba compile-time measurement")
    scan.add_argument("--no-scaling", action="store_true", help="skip the time-vs-L series and plot")
    scan.add_argument("--split", action="store_true",
                      help="also time the cpu backend's kernels directly (hot and cold cache, one after the "
                           "other) and print where its (fwd+bwd)/fwd goes")
    scan.set_defaults(func=cmd_bench_scan)

    mix = bench_sub.add_parser("mixer", help="multi-route vision mixer: routing vs scan time, 2D and 3D")
    mix.add_argument("--route", default="cross", help="scan route name (default: cross)")
    _add_layer_size_args(mix, d_model=48)
    mix.set_defaults(func=cmd_bench_mixer)

    lay = bench_sub.add_parser("layer", help="Mamba and Mamba2 layers, forward and forward+backward, with the "
                                             "pure-torch ops against the numba kernels")
    _add_layer_size_args(lay, d_model=96)
    lay.add_argument("--length", type=int, default=4096)
    lay.set_defaults(func=cmd_bench_layer)

    _add_bench_models(bench_sub)
    _add_bench_mil(bench_sub)
    _add_bench_ehr(bench_sub)

    omp = bench_sub.add_parser("openmp", help="cpu scan after a parallel torch op vs after a pause, and a "
                                              "torch training step, under the OpenMP spin setting in effect")
    omp.add_argument("--repeats", type=int, default=20)
    omp.set_defaults(func=cmd_bench_openmp)


def _add_bench_models(bench_sub: argparse._SubParsersAction) -> None:
    mo = bench_sub.add_parser(
        "models", help="segmentation models: CPU inference time, peak memory, params and FLOPs against input size",
        description="Each (model, dims, size) in a fresh process: median forward time (batch 1, eval, no_grad) "
                    "after one warm-up, peak resident-set growth of one forward, parameters, FLOPs; "
                    "models.json and models.png in --out.")
    mo.add_argument("--task", choices=["segmentation", "restoration"], default="segmentation",
                    help="which models (default segmentation; restoration: 1 output channel, 2D sides 256-2048)")
    mo.add_argument("--model", action="append", help="registered model of --task (repeatable; default: all)")
    mo.add_argument("--spatial-dims", type=int, action="append", choices=[2, 3],
                    help="repeatable; default: 2 and 3 where the model supports them")
    mo.add_argument("--sizes-2d", type=_sides, default=None, help="2D sides, e.g. 32,64 (default 128,256,512,1024; "
                    "with --task restoration 256,512,1024,2048)")
    mo.add_argument("--sizes-3d", type=_sides, default=None, help="3D sides, e.g. 16,32 (default 32,64,96,128)")
    mo.add_argument("--repeats", type=int, default=3, help="timed calls per case (median), after one warm-up")
    mo.add_argument("--max-seconds", type=float, default=60.0,
                    help="a call slower than this skips the size (and the larger ones); default 60")
    mo.add_argument("--train-step", action="store_true",
                    help="also time a 3D training step (forward, backward, AdamW) at batch 2")
    mo.add_argument("--train-sizes", type=_sides, default=None,
                    help="3D sides of the training step (default: the smallest 3D size and 64)")
    mo.add_argument("--classifier-step", action="store_true",
                    help="also time a 3D classifier's training step at batch 8 (with --model: only the models named)")
    mo.add_argument("--classifier-sizes", type=_sides, default=None,
                    help="3D sides of the classifier step (default: 64)")
    mo.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    mo.add_argument("--out", type=Path, default=None,
                    help="folder for models.json and models.png (default medssm-bench/models-<timestamp>)")
    mo.add_argument("--overwrite", action="store_true", help="replace files in an existing --out folder")
    mo.set_defaults(func=cmd_bench_models)


def _add_bench_mil(bench_sub: argparse._SubParsersAction) -> None:
    mi = bench_sub.add_parser(
        "mil", help="MIL models: time and peak memory of one forward+backward against bag size",
        description="Each (model, bag size) in a fresh process: median forward+backward time of one bag of 512-d "
                    "features and the growth of the resident-set high-water mark during one; mil.json and mil.png "
                    "in --out.")
    mi.add_argument("--model", action="append", choices=["abmil", "transmil", "transmil_exact", "mamba_mil",
                                                         "mamba_mil_nossm", "mamba_mil_ckpt"],
                    help="repeatable; default: all six")
    mi.add_argument("--sizes", type=_sides, default=None, help="instances per bag, e.g. 1000,10000 "
                                                              "(default 1000,10000,100000)")
    mi.add_argument("--repeats", type=int, default=3, help="timed calls per point (median), after one warm-up")
    mi.add_argument("--max-seconds", type=float, default=120.0,
                    help="skip a size whose extrapolated time per call passes this (default 120)")
    mi.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    mi.add_argument("--out", type=Path, default=None, help="folder for mil.json and mil.png "
                                                           "(default medssm-bench/mil-<timestamp>)")
    mi.add_argument("--overwrite", action="store_true", help="replace files in an existing --out folder")
    mi.set_defaults(func=cmd_bench_mil)


def _add_bench_ehr(bench_sub: argparse._SubParsersAction) -> None:
    eh = bench_sub.add_parser("ehr", help="event-sequence models: forward+backward time and peak memory against "
                                          "sequence length (512 to 32k tokens)")
    eh.add_argument("--model", action="append", help="registered events model (repeatable; default ehr_mamba and "
                                                     "ehr_transformer)")
    eh.add_argument("--lengths", type=_sides, default=None, help="sequence lengths, e.g. 512,1024 (default 512..32768)")
    eh.add_argument("--d-model", type=int, default=64, help="model width (default 64, the physionet2012 config's)")
    eh.add_argument("--depth", type=int, default=2, help="layers (default 2)")
    eh.add_argument("--repeats", type=int, default=3, help="timed calls per case (median), after one warm-up")
    eh.add_argument("--max-seconds", type=float, default=120.0,
                    help="a call slower than this skips the length (and the longer ones); default 120")
    eh.add_argument("--max-memory-gb", type=float, default=None,
                    help="skip transformer lengths whose attention needs more (default: half the RAM)")
    eh.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    eh.add_argument("--out", type=Path, default=None, help="folder for ehr.json and ehr.png")
    eh.add_argument("--overwrite", action="store_true", help="replace files in an existing --out folder")
    eh.set_defaults(func=cmd_bench_ehr)


def _add_fhir(sub: argparse._SubParsersAction) -> None:
    fh = sub.add_parser("fhir", help="FHIR R4 tools for event data")
    fh_sub = fh.add_subparsers(dest="fhir_command", required=True)
    ex = fh_sub.add_parser("export", help="write PhysioNet 2012 stays as FHIR (Bundles or NDJSON) in the same "
                                          "folder layout, with the outcome files")
    ex.add_argument("--source", type=Path, required=True, help="the challenge folder (set-a/, Outcomes-a.txt, ...)")
    ex.add_argument("--out", type=Path, required=True, help="output folder (set-a/<RecordID>.json, ...)")
    ex.add_argument("--set", action="append", help="set folder to export (repeatable; default every set-*)")
    ex.add_argument("--format", choices=["bundle", "ndjson"], default="bundle",
                    help="one Bundle per stay, or Patient/Encounter/Observation.ndjson per set")
    ex.add_argument("--mapping", type=Path, default=None, help="variable <-> LOINC mapping JSON (default: shipped)")
    ex.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    ex.set_defaults(func=cmd_fhir_export)


def _add_ehr_baseline(sub: argparse._SubParsersAction) -> None:
    eb = sub.add_parser("ehr-baseline", help="gradient-boosted trees on per-variable summaries of event data, "
                                             "through a config's splits and metrics")
    eb.add_argument("--config", required=True, help="YAML config or shipped name (e.g. physionet2012)")
    eb.add_argument("--out", type=Path, required=True, help="report folder (metrics.json, per_case.csv, plots)")
    eb.add_argument("--max-iter", type=int, default=500, help="boosting iterations (the number used is picked "
                                                              "on the val split)")
    eb.add_argument("--learning-rate", type=float, default=0.05)
    eb.add_argument("--seed", type=int, default=None, help="default: the config's train.seed")
    eb.add_argument("--overwrite", action="store_true", help="replace an existing report")
    eb.add_argument("overrides", nargs="*", help="config overrides, e.g. data.args.root=/data/p12")
    eb.set_defaults(func=cmd_ehr_baseline)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """--device and --no-progress, shared by train, evaluate and predict."""
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:<index> (default: train.device of the config for train, "
                             "auto for evaluate and predict)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train a model from a YAML config (torchrun for several processes)",
                        description="Train from --config (a file or a shipped name) with key=value overrides, "
                                    "e.g. `medssm train --config demo train.max_steps=50 --out runs/x`.")
    tr.add_argument("--config", help="YAML config file, or the name of a shipped config (e.g. demo)")
    tr.add_argument("--out", type=Path, required=True, help="run folder (config, log, curves, checkpoints)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="delete an existing run in --out and start again")
    _add_run_options(tr)
    tr.add_argument("overrides", nargs="*", help="section.key=value (YAML value), e.g. train.lr=3e-4")
    tr.set_defaults(func=cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="metrics, per-case table and overlays for a checkpoint on a split")
    ev.add_argument("--checkpoint", type=Path, default=None, action="append",
                    help="run folder, checkpoint folder or cv folder; repeat it for an ensemble (the mean of the "
                         "probabilities)")
    ev.add_argument("--model", choices=["bm3d"], default=None,
                    help="a classical method instead of a checkpoint (restoration; needs --config and --out)")
    ev.add_argument("--config", default=None, help="with --model: YAML config or shipped config name (the data)")
    ev.add_argument("--all-images", action="store_true",
                    help="restoration: a side-by-side PNG for every case (default: the first 8)")
    ev.add_argument("--split", default=None, help="dataset split (default: the config's test split)")
    ev.add_argument("--out", type=Path, default=None, help="report folder (default: <checkpoint>/eval-<split>)")
    ev.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    ev.add_argument("--roi-size", type=_sides, default=None, help="sliding-window size, e.g. 96,96")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing report")
    _add_run_options(ev)
    ev.add_argument("overrides", nargs="*", help="config overrides, e.g. data.args.root=/data/drive")
    ev.set_defaults(func=cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("predict", help="predict masks/labels for a file or a folder, written in the input format")
    pr.add_argument("--checkpoint", type=Path, required=True, action="append",
                    help="run folder, checkpoint folder or cv folder; repeat it for an ensemble (the mean of the "
                         "probabilities)")
    pr.add_argument("--input", type=Path, required=True, help="NIfTI/DICOM/PNG file, DICOM series or folder")
    pr.add_argument("--output", type=Path, required=True, help="output file (single input) or folder")
    pr.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    pr.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    pr.add_argument("--roi-size", type=_sides, default=None, help="sliding-window size (default: the config's)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pr.add_argument("--skip-existing", action="store_true",
                    help="leave cases whose outputs exist (or whose CSV row exists) alone: rerun after a failure")
    pr.add_argument("--continue-on-error", action="store_true",
                    help="predict the other cases when one fails; the failures go to failed.json and the exit code")
    pr.add_argument("--stream", action="store_true",
                    help="stream a WFDB record (--input without extension) through a causal model; --output: CSV")
    pr.add_argument("--window-seconds", type=float, default=1.0, help="--stream: seconds per predicted window")
    pr.add_argument("--chunk-seconds", type=float, default=1.0, help="--stream: seconds of signal read at a time")
    pr.add_argument("--max-seconds", type=float, default=None, help="--stream: stop after this much signal")
    _add_run_options(pr)
    pr.set_defaults(func=cmd_predict)


def _add_cv(sub: argparse._SubParsersAction) -> None:
    cv = sub.add_parser("cv", help="k-fold cross-validation: train every fold, score each on its test fold, "
                                   "aggregate (resumable fold by fold)",
                        description="Train fold 0..K-1 of --config into --out/fold_<i> (data.args.fold=i, "
                                    "data.args.num_folds=K), score each fold's best checkpoint on its own test "
                                    "fold, and write cv_metrics.csv, cv_summary.md and cv_predictions.csv. Rerun "
                                    "the same command to continue after a stop.")
    cv.add_argument("--config", required=True, help="YAML config file, or the name of a shipped config")
    cv.add_argument("--folds", type=int, required=True, help="number of folds (>= 2)")
    cv.add_argument("--out", type=Path, required=True, help="cross-validation folder (fold_<i>/ run folders)")
    cv.add_argument("--fold", type=int, default=None, help="train and score this fold only (0..folds-1)")
    cv.add_argument("--overwrite", action="store_true",
                    help="start the cross-validation again (with --fold: that fold only)")
    _add_run_options(cv)
    cv.add_argument("overrides", nargs="*", help="section.key=value (YAML value), e.g. train.max_steps=500")
    cv.set_defaults(func=cmd_cv)


def _add_models(sub: argparse._SubParsersAction) -> None:
    mo = sub.add_parser("models", help="registered models (with --counts: parameters and FLOPs)")
    mo.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern")
    mo.add_argument("--task", default=None,
                    help="only the models of this task (segmentation, classification, restoration, mil, events)")
    mo.add_argument("--spatial-dims", type=int, default=None, help="count for this spatial_dims (default: highest)")
    mo.add_argument("--counts", action="store_true",
                    help="build each model to count its parameters and FLOPs (seconds per model)")
    mo.add_argument("--markdown", action="store_true",
                    help="print the table, with counts, as GitHub markdown (the README's model table)")
    mo.set_defaults(func=cmd_models)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    de = sub.add_parser("demo", help="train, evaluate and predict on generated data (a few minutes on a CPU)")
    de.add_argument("--out", type=Path, default=Path("medssm-demo"), help="output folder (default: medssm-demo)")
    de.add_argument("--steps", type=int, default=None, help="training steps (default: the demo config's)")
    de.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    de.add_argument("--no-progress", action="store_true", help="no progress bar")
    de.set_defaults(func=cmd_demo)


def _add_configs(sub: argparse._SubParsersAction) -> None:
    co = sub.add_parser("configs", help="every config key: section, type, default and meaning",
                        description="Every key of the config schema with its type, default and meaning; "
                                    "--markdown prints docs/configs.md (with each data set's arguments).")
    co.add_argument("--markdown", action="store_true", help="print docs/configs.md")
    co.set_defaults(func=cmd_configs)


def main(argv: list[str] | None = None) -> int:
    """Run the ``medssm`` command with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    medssm.tune_process()  # before any command imports torch (see the module docstring)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError, FileExistsError) as error:
        # Bad input and failed cases print one line naming the file or setting; -v shows the traceback.
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

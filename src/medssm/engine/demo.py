"""``medssm demo``: train, evaluate and predict end to end on generated data, in a few minutes on a CPU.

Writes into one folder: ``run/`` (config, log, curves.png, checkpoints), ``evaluation/`` (metrics.json,
metrics.md, per_case.csv, predictions.png), ``inputs/`` + ``predictions/`` (PNG images and the predicted
masks, as ``medssm predict`` writes them) and ``REPORT.md`` tying them together.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import build_dataset
from .config import load_config
from .evaluate import evaluate
from .files import atomic_path, write_text_atomic
from .predict import predict_checkpoint
from .trainer import train

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
PREDICT_CASES = 4


def run_demo(out: str | Path, overwrite: bool = False, steps: int | None = None, progress: bool = True) -> Path:
    """Run the demo into ``out`` and return the report path."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"demo folder {out} is not empty; pass --overwrite to replace it")
        if not (out / "run").exists() and not (out / "REPORT.md").exists():
            raise FileExistsError(f"--overwrite refuses to empty {out}: it does not look like a demo folder")
        shutil.rmtree(out)
    overrides = [f"train.max_steps={steps}"] if steps else []
    config = load_config(DEMO_CONFIG, overrides)

    started = time.time()
    summary = train(config, out / "run", progress=progress)
    train_seconds = time.time() - started
    checkpoint = out / "run" / "checkpoints" / "best"
    metrics = evaluate(checkpoint, out / "evaluation", split=config.data.test_split)

    # A few test images as PNG files, predicted the way a user would with `medssm predict`.
    test = build_dataset(config.data.name, split=config.data.test_split, **config.data.args)
    (out / "inputs").mkdir(parents=True)
    for i in range(min(PREDICT_CASES, len(test))):
        pixels = (test[i]["image"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        with atomic_path(out / "inputs" / f"case_{i}.png") as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    written = predict_checkpoint(checkpoint, out / "inputs", out / "predictions")
    total_seconds = time.time() - started

    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    report = f"""# medssm demo

Model `{config.model.name}` ({json.dumps(config.model.args)}) trained for {summary['step']} steps on
`{config.data.name}` ({json.dumps(config.data.args)}), seed {config.train.seed}.
Best validation {summary['best_metric']} {summary['best']:.4f} at step {summary['best_step']}.
Training took {train_seconds:.0f} s; the whole demo {total_seconds:.0f} s.

## Test split ({len(test)} cases, checkpoint `run/checkpoints/best`)

| metric | value |
|---|---|
{rows}

- training curves: `run/curves.png`; log: `run/log.jsonl`; resolved config: `run/config.yaml`
- overlays of test predictions: `evaluation/predictions.png`; per-case metrics: `evaluation/per_case.csv`
- `medssm predict` on `inputs/*.png` wrote {len(written)} masks to `predictions/`

Reproduce: `medssm demo --out {out}` (or `medssm train --config demo --out {out / 'run'}`, then
`medssm evaluate --checkpoint {out / 'run'}` and `medssm predict --checkpoint {out / 'run'} --input IN --output OUT`).
"""
    write_text_atomic(out / "REPORT.md", report)
    return out / "REPORT.md"

"""Streaming prediction over a long WFDB record with a streaming-capable (causal) checkpoint: ``medssm predict
--stream``.

The record is read chunk by chunk (``wfdb.rdrecord(sampfrom=, sampto=)``), each chunk is standardised per
lead with the running mean and standard deviation of the samples seen so far (causal: no statistic looks
ahead, and the memory is constant), and fed to the model's ``stream_step``; the logits of every completed
window are written to a CSV row as they come (window, start_s, end_s, predicted, prob_0..prob_{K-1}). Nothing
grows with the record's length but the CSV file, so the peak resident memory for 5 minutes and for 30
minutes of signal should match.

Reported: signal seconds, wall seconds, the real-time factor (signal seconds / wall seconds; > 1 is faster
than real time), the peak resident set size of the process (``getrusage``'s ru_maxrss: the whole process,
imports included) and the bytes of the model's stream state.

Note: a model trained on beat windows each z-scored on its own (``data: wfdb``) sees a continuously running
signal here, standardised by running statistics instead; its per-window predictions are then out of its
training distribution. The measurement of speed and memory does not depend on that.
"""

from __future__ import annotations

import csv
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import load_model


class RunningStandardizer:
    """Per-lead z-score with the mean and variance of all samples seen so far (inclusive), in float64:
    (samples, leads) -> same. Constant memory (three sums per lead)."""

    def __init__(self, leads: int, min_std: float = 1e-6) -> None:
        self.count, self.sum, self.sum_sq = 0, np.zeros(leads), np.zeros(leads)
        self.min_std = min_std

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        x = chunk.astype(np.float64)
        counts = self.count + np.arange(1, len(x) + 1)[:, None]
        sums = self.sum + np.cumsum(x, axis=0)
        sums_sq = self.sum_sq + np.cumsum(x * x, axis=0)
        mean = sums / counts
        std = np.sqrt(np.maximum(sums_sq / counts - mean**2, 0.0))
        self.count, self.sum, self.sum_sq = int(counts[-1, 0]), sums[-1], sums_sq[-1]
        return ((x - mean) / np.maximum(std, self.min_std)).astype(np.float32)


def peak_rss_mib() -> float:
    """The process's peak resident set size in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _leads(meta: dict[str, Any], names: list[str], in_channels: int) -> list[int]:
    """The record's signal indices the model reads: the training config's data.args.leads, else the first ones."""
    wanted = meta.get("config", {}).get("data", {}).get("args", {}).get("leads") or list(range(in_channels))
    indices = [names.index(lead) if isinstance(lead, str) and lead in names else lead for lead in wanted]
    if len(indices) != in_channels or not all(isinstance(i, int) and 0 <= i < len(names) for i in indices):
        raise ValueError(f"cannot map the model's leads {wanted} onto the record's signals {names}")
    return indices


def stream_record(checkpoint: str | Path, record: str | Path, output: str | Path, window_seconds: float = 1.0,
                  chunk_seconds: float = 1.0, max_seconds: float | None = None) -> dict[str, float]:
    """Stream the WFDB ``record`` (path without extension) through the causal ``checkpoint`` on the CPU, write
    per-window predictions to the CSV ``output`` and return the summary (see the module docstring).

    ``window_seconds``: window length, rounded down to a multiple of the model's stride (at least one stride).
    ``chunk_seconds``: how much signal each read hands over. ``max_seconds``: stop after this much signal.
    """
    import wfdb

    model, meta = load_model(checkpoint, "cpu")
    if not getattr(model, "causal", False) or not hasattr(model, "stream_step"):
        raise ValueError(f"checkpoint {checkpoint} ({meta['model']}) cannot stream: train a causal model, e.g. "
                         "model.name=ecg_mamba model.args.causal=true")
    header = wfdb.rdheader(str(record))
    fs, total = float(header.fs), int(header.sig_len)
    if max_seconds is not None:
        total = min(total, int(round(max_seconds * fs)))
    leads = _leads(meta, list(header.sig_name), model.in_channels)
    window = max(model.stride, int(window_seconds * fs) // model.stride * model.stride)
    chunk = max(1, int(round(chunk_seconds * fs)))
    state = model.init_stream(window)
    standardize = RunningStandardizer(len(leads))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["window", "start_s", "end_s", "predicted",
                         *(f"prob_{k}" for k in range(model.head.out_features))])
        for begin in range(0, total, chunk):
            signal = wfdb.rdrecord(str(record), sampfrom=begin, sampto=min(begin + chunk, total),
                                   channels=leads).p_signal
            x = torch.from_numpy(standardize(np.nan_to_num(signal))).T.unsqueeze(0)  # (1, leads, n)
            first = state.windows_done
            probs = torch.softmax(model.stream_step(state, x)[0], dim=-1)
            for j, p in enumerate(probs.tolist()):
                index = first + j
                writer.writerow([index, f"{index * window / fs:.4f}", f"{(index + 1) * window / fs:.4f}",
                                 int(np.argmax(p)), *(f"{v:.6f}" for v in p)])
    wall = time.perf_counter() - start
    state_bytes = sum(t.numel() * t.element_size() for t in state.tensors())
    return {"signal_seconds": total / fs, "wall_seconds": wall, "real_time_factor": total / fs / max(wall, 1e-9),
            "windows": state.windows_done, "window_seconds": window / fs, "peak_rss_mib": peak_rss_mib(),
            "state_bytes": state_bytes, "chunk_samples": chunk}

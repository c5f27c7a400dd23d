"""Heartbeats from WFDB records (MIT-BIH and other PhysioNet databases) with their reference beat labels.

Each annotated beat becomes one window of the signal around its R peak. Beat symbols map to the AAMI EC57
classes used in arrhythmia papers (de Chazal et al., IEEE TBME 51(7), 2004):
N (N, L, R, e, j), S (A, a, J, S), V (V, E), F (F), Q (/, f, Q); other symbols (rhythm changes "+", noise
"~", artefacts "|", ...) are not beats and are skipped, as are the beat symbols AAMI leaves out (B, r, n, ?).

Splits: by default the beats of all ``records`` are split at random (seeded, per beat). That is an
*intra-patient* split: beats of one patient land in train and test, which flatters the scores. For the
inter-patient protocol give separate record lists per split with ``split_records`` (e.g. de Chazal's DS1
for training, DS2 for testing); a split missing from ``split_records`` ("val") is then carved at random from
the beats of the "train" records.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import check_split, check_split_mapping, require_nonempty, split_indices

AAMI_CLASSES = {"N": ("N", "L", "R", "e", "j"), "S": ("A", "a", "J", "S"), "V": ("V", "E"), "F": ("F",),
                "Q": ("/", "f", "Q")}
SYMBOL_TO_AAMI = {symbol: name for name, symbols in AAMI_CLASSES.items() for symbol in symbols}
# WFDB beat annotation codes (PhysioNet's annotation table): everything else is not a beat.
BEAT_SYMBOLS = ("N", "L", "R", "B", "A", "a", "J", "S", "V", "r", "F", "e", "j", "n", "E", "/", "f", "Q", "?")


class WFDBBeats(Dataset):
    """Beat windows of WFDB records: items {"image": float32 (leads, before + after), "label": int64, "name"}.

    Args:
        records: record paths without extension (``.../mitdb/100``); the annotation file
            ``<record>.<annotation>`` holds the beat labels at the R peaks.
        split: "train", "val" or "test". window: (samples before, samples after) the R peak; the default
            (90, 170) is 0.25 s / 0.47 s at MIT-BIH's 360 Hz. Beats whose window runs off the record are skipped.
        leads: signal indices or names (e.g. "MLII") to keep, in that order.
        classes: "aami" (N, S, V, F, Q), "normal_vs_other" (AAMI N against the beats of S, V, F and Q),
            "symbols" (the beat symbols found, sorted), or an explicit list of beat symbols (beats with other
            symbols are skipped).
        val_fraction, test_fraction, seed: the per-beat split when ``split_records`` is not given.
        split_records: {"train": [...], "val": [...], "test": [...]} record lists for inter-patient splits.
        normalize: z-score each window per lead (std floored at 1e-6), removing baseline and gain differences.
        transform: callable applied to the item dict.
    """

    task = "classification"
    spatial_dims = 1

    def __init__(self, records: Sequence[str | Path] | None = None, split: str = "train",
                 window: tuple[int, int] = (90, 170), leads: Sequence[int | str] = (0,),
                 classes: str | Sequence[str] = "aami", seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 normalize: bool = True, split_records: Mapping[str, Sequence[str | Path]] | None = None,
                 annotation: str = "atr") -> None:
        self.split, self.transform = check_split(split), transform
        before, after = (int(w) for w in window)
        if before < 0 or after < 1:
            raise ValueError(f"window must be (samples before >= 0, samples after >= 1) the R peak, got {window}")
        self.window, self.leads, self.annotation = (before, after), tuple(leads), annotation
        if not self.leads:
            raise ValueError("leads must name at least one signal")
        if split_records is not None:
            check_split_mapping(split_records, "split_records")
            if "train" not in split_records and split not in split_records:
                raise ValueError(f"split_records has no {split!r} list and no 'train' list to carve it from")
        elif not records:
            raise ValueError("give record paths (records=[...]) or split_records={'train': [...], ...}")
        all_records = [Path(r) for r in records or []] if split_records is None else \
            sorted({Path(r) for paths in split_records.values() for r in paths})
        beats = {record: self._read_beats(record) for record in all_records}
        self.class_names = self._class_names(classes, beats)
        index = {name: i for i, name in enumerate(self.class_names)}
        chosen = self._choose_beats(split, split_records, beats, val_fraction, test_fraction, seed, records)
        signals, labels, names = [], [], []
        for record, position in chosen:
            windows, symbols, samples = beats[record]
            label = self._class_of(symbols[position])
            if label is None:
                continue
            signals.append(windows[position])
            labels.append(index[label])
            names.append(f"{record.name}:{samples[position]}")
        root = ", ".join(str(r) for r in (split_records or {}).get(split, records or []))[:200]
        require_nonempty(labels, split, root or "records", f"window {self.window}, classes {self.class_names}")
        data = np.stack(signals).astype(np.float32)
        if normalize:
            std = data.std(axis=-1, keepdims=True)
            data = (data - data.mean(axis=-1, keepdims=True)) / np.maximum(std, 1e-6)
        self.signals = torch.from_numpy(data)  # (beats, leads, window)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.names = names
        self.num_classes = len(self.class_names)
        self.in_channels = len(self.leads)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"image": self.signals[index], "label": self.labels[index], "name": self.names[index]}
        return self.transform(item) if self.transform is not None else item

    def class_counts(self) -> dict[str, int]:
        """{class name: number of beats} in this split."""
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    # -- reading ----------------------------------------------------------------------------------------------

    def _read_beats(self, record: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(windows (beats, leads, window), beat symbols, R-peak samples) of one record's annotated beats."""
        with _quiet_pandas():
            import wfdb

        header, annotation_file = record.with_name(record.name + ".hea"), record.with_name(
            f"{record.name}.{self.annotation}")
        if not header.is_file():
            raise FileNotFoundError(f"WFDB record {record}: header {header} not found (pass the record path "
                                    f"without extension)")
        if not annotation_file.is_file():
            raise FileNotFoundError(f"WFDB record {record}: annotation file {annotation_file} not found")
        try:
            with _quiet_pandas():
                head = wfdb.rdheader(str(record))
        except Exception as error:  # wfdb raises ValueError, IndexError, ... on a malformed header
            raise ValueError(f"{header}: cannot read WFDB header ({type(error).__name__}: {error})") from error
        channels = [self._lead_index(lead, head.sig_name, record) for lead in self.leads]
        try:
            with _quiet_pandas():
                signal = wfdb.rdrecord(str(record), channels=channels).p_signal  # (samples, leads) physical units
                ann = wfdb.rdann(str(record), self.annotation)
        except Exception as error:
            raise ValueError(f"WFDB record {record}: cannot read signal or annotations "
                             f"({type(error).__name__}: {error})") from error
        signal = np.nan_to_num(np.asarray(signal, dtype=np.float32))  # WFDB marks missing samples as NaN
        before, after = self.window
        samples = np.asarray(ann.sample)
        keep = [i for i, s in enumerate(ann.symbol)
                if s in BEAT_SYMBOLS and samples[i] - before >= 0 and samples[i] + after <= len(signal)]
        offsets = np.arange(-before, after)
        if keep:
            windows = signal[samples[keep][:, None] + offsets[None, :]]  # (beats, window, leads)
            windows = np.ascontiguousarray(windows.transpose(0, 2, 1))
        else:
            windows = np.zeros((0, len(channels), before + after), np.float32)
        return windows, [ann.symbol[i] for i in keep], samples[keep]

    @staticmethod
    def _lead_index(lead: int | str, names: list[str], record: Path) -> int:
        if isinstance(lead, str):
            if lead not in names:
                raise ValueError(f"WFDB record {record}: no lead named {lead!r}; it has {names}")
            return names.index(lead)
        if not 0 <= int(lead) < len(names):
            raise ValueError(f"WFDB record {record}: lead index {lead} out of range; it has {len(names)} leads "
                             f"{names}")
        return int(lead)

    def _class_names(self, classes: str | Sequence[str], beats: dict) -> list[str]:
        if classes == "aami":
            self._symbol_map: dict[str, str] = dict(SYMBOL_TO_AAMI)
            return list(AAMI_CLASSES)
        if classes == "normal_vs_other":
            self._symbol_map = {s: "normal" if c == "N" else "other" for s, c in SYMBOL_TO_AAMI.items()}
            return ["normal", "other"]
        if classes == "symbols":
            found = sorted({s for _, symbols, _ in beats.values() for s in symbols})
        elif isinstance(classes, str):
            raise ValueError(f"classes must be 'aami', 'normal_vs_other', 'symbols' or a list of beat symbols, "
                             f"got {classes!r}")
        else:
            found = list(classes)
            unknown = [s for s in found if s not in BEAT_SYMBOLS]
            if unknown:
                raise ValueError(f"classes {unknown} are not WFDB beat symbols {list(BEAT_SYMBOLS)}")
        self._symbol_map = {s: s for s in found}
        return found

    def _class_of(self, symbol: str) -> str | None:
        return self._symbol_map.get(symbol)

    def _choose_beats(self, split: str, split_records: Mapping[str, Sequence[str | Path]] | None,
                      beats: dict, val_fraction: float, test_fraction: float, seed: int,
                      records: Sequence[str | Path] | None) -> list[tuple[Path, int]]:
        """(record, beat position) pairs of ``split``, in record order then time order."""
        def pool(paths: Sequence[str | Path]) -> list[tuple[Path, int]]:
            # Sorted records: the split depends on the set of records, not the order they were listed in.
            return [(Path(r), i) for r in sorted(paths, key=str) for i in range(len(beats[Path(r)][1]))]

        if split_records is None:
            everything = pool(records or [])
            return [everything[i] for i in split_indices(len(everything), val_fraction, test_fraction, seed)[split]]
        if split in split_records and split != "train":
            return pool(split_records[split])
        # The train records also supply the splits that have no record list of their own.
        carve_val = 0.0 if "val" in split_records else val_fraction
        carve_test = 0.0 if "test" in split_records else test_fraction
        everything = pool(split_records["train"])
        return [everything[i] for i in split_indices(len(everything), carve_val, carve_test, seed)[split]]


@contextlib.contextmanager
def _quiet_pandas():
    """wfdb 4.x calls pandas with the deprecated ``inplace=`` keyword on every read; that warning is wfdb's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword")
        yield

"""PhysioNet/CinC Challenge 2012 (Silva et al., CinC 2012): the first 48 h of adult ICU stays as EHRMamba
tokens, with in-hospital death as the label, read from the challenge's CSV files or from their FHIR export.

Folder layout (the challenge's own files): ``set-a/<RecordID>.txt`` (``set-b``, ``set-c`` alike), one CSV a
stay with rows ``Time,Parameter,Value`` (Time "HH:MM" since ICU admission), and ``Outcomes-a.txt`` (-b, -c)
with ``RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death`` (-1 = missing). ``medssm fhir
export`` writes the same layout with one FHIR R4 Bundle a stay (``set-a/<RecordID>.json``) and copies the
outcome files; ``format="fhir"`` reads it back (see :mod:`.fhir`).

Splits (the issue's protocol): "train" and "val" are a seeded split of ``train_set`` (default set-a) by
RecordID (``val_fraction``, ``seed``; or fold ``fold`` of ``num_folds`` through ``select_cases``, the fold
then being "test"); "test" is ``test_set`` (default set-b) whole, unless ``num_folds`` is given.

Labels are keyed by RecordID, never by position: every stay must have an outcome row (ValueError naming the
record otherwise); outcome rows without a stay are counted. Bad records (rules of :mod:`.records`): values
-1, out of range or of unknown variables are dropped and counted; a CSV whose times go backwards is a
corrupt file: the stay is dropped and counted (``strict=True``: ValueError naming the file and line); an
empty stay (no event and no descriptor) is dropped and counted. The counts are logged (INFO) and kept in
``counts``. A malformed row (not three fields, a time that is not HH:MM, a value that is not a number) is
always a ValueError naming the file and line.

Items: {"image": float32 (max_length, 4) tokens (code, type, hours, value; see :mod:`.tokens`), "mask": bool
(max_length,) real tokens, "label": int64 in-hospital death, "targets": float32 (4,) (in-hospital death,
length of stay in days, SAPS-I, SOFA; NaN = missing) for multi-task heads, "name": the RecordID}.
``target_names`` gives the short names of those columns ("death", "los", "saps", "sofa"), which
``model.args.tasks`` uses as head names, and :meth:`PhysioNet2012.target_table` all rows at once.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..splits import check_split, select_cases
from .records import STATIC_VARIABLES, Stay, clean_events, clean_statics, count_summary
from .tokens import EventTokenizer

logger = logging.getLogger(__name__)

OUTCOME_COLUMNS = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
TARGETS = ("In-hospital_death", "Length_of_stay", "SAPS-I", "SOFA")  # the order of item["targets"]
TARGET_NAMES = ("death", "los", "saps", "sofa")  # short names of TARGETS: the heads of model.args.tasks
FORMATS = ("csv", "fhir")


def parse_minutes(text: str, where: str) -> int:
    """"HH:MM" -> minutes; ValueError naming ``where`` otherwise."""
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and int(minutes) < 60):
        raise ValueError(f"{where}: time must be HH:MM, got {text!r}")
    return int(hours) * 60 + int(minutes)


def read_stay_csv(path: str | Path, counts: Counter | None = None) -> Stay | None:
    """One challenge CSV -> a cleaned :class:`Stay`; None (counted as ``time_out_of_order``) when its times
    go backwards. ``counts`` collects the dropped values per rule."""
    path, counts = Path(path), Counter() if counts is None else counts
    rows = path.read_text().splitlines()
    if not rows or rows[0].strip() != "Time,Parameter,Value":
        raise ValueError(f"{path}: expected the header 'Time,Parameter,Value', got {rows[0] if rows else 'nothing'!r}")
    record_id, statics, events, previous = path.stem, {}, [], 0
    for number, line in enumerate(rows[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        where = f"{path}, line {number}"
        if len(fields) != 3:
            raise ValueError(f"{where}: expected Time,Parameter,Value, got {line!r}")
        minute, name = parse_minutes(fields[0], where), fields[1]
        try:
            value = float(fields[2])
        except ValueError:
            raise ValueError(f"{where}: value {fields[2]!r} is not a number") from None
        if minute < previous:
            counts["time_out_of_order"] += 1
            logger.warning("%s: time goes backwards (%s after %d min): stay dropped", where, fields[0], previous)
            return None
        previous = minute
        if name == "RecordID":
            record_id = str(int(value))
        elif minute == 0 and name in STATIC_VARIABLES and name not in statics:
            statics[name] = value
        else:
            events.append((minute, name, value))
    minutes, variables, values = clean_events(events, counts)
    return Stay(record_id, clean_statics(statics, counts), minutes, variables, values)


def read_outcomes(path: str | Path) -> dict[str, dict[str, float]]:
    """Outcomes-x.txt -> {RecordID: {column: value (NaN for -1)}}; the death label must be 0 or 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outcomes file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != OUTCOME_COLUMNS:
            raise ValueError(f"{path}: expected columns {','.join(OUTCOME_COLUMNS)}, got {reader.fieldnames}")
        outcomes = {}
        for number, row in enumerate(reader, start=2):
            try:
                values = {k: float(v) for k, v in row.items() if k != "RecordID"}
                record = str(int(row["RecordID"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {number}: not a row of numbers: {row}") from None
            if values["In-hospital_death"] not in (0.0, 1.0):
                raise ValueError(f"{path}, line {number}: In-hospital_death must be 0 or 1, got {row}")
            if record in outcomes:
                raise ValueError(f"{path}, line {number}: RecordID {record} is listed twice")
            outcomes[record] = {k: (math.nan if v == -1 else v) for k, v in values.items()}
    return outcomes


@lru_cache(maxsize=8)
def _read_set(folder: str, fmt: str, strict: bool, fingerprint: tuple) -> tuple[tuple[Stay, ...], tuple]:
    """Every stay of a set folder (cached per process while its files are unchanged: train and val read it
    once), and the counts."""
    counts: Counter = Counter()
    stays = []
    if fmt == "csv":
        paths = sorted(Path(folder).glob("*.txt"))
        for path in paths:
            stay = read_stay_csv(path, counts)
            if stay is None and strict:
                raise ValueError(f"{path}: times go backwards (strict=True)")
            stays.append(stay)
    else:
        from .fhir import read_fhir_folder

        stays = read_fhir_folder(Path(folder), counts)
    kept = []
    for stay in stays:
        if stay is not None and stay.is_empty():
            counts["empty_stay"] += 1
        elif stay is not None:
            kept.append(stay)
    if not kept:
        raise ValueError(f"{folder}: no stays found ({'*.txt' if fmt == 'csv' else '*.json / *.ndjson'} files)")
    return tuple(kept), tuple(counts.items())


def read_set(root: Path, name: str, fmt: str = "csv", strict: bool = False) -> tuple[list[Stay], Counter]:
    """The stays of ``root/name`` (e.g. "set-a") in the given format, and the counts of dropped values."""
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such set folder (expected {root}/set-a, set-b, ...)")
    files = [p.stat() for p in folder.iterdir()]
    fingerprint = (len(files), max((s.st_mtime_ns for s in files), default=0), sum(s.st_size for s in files))
    stays, counts = _read_set(str(folder.resolve()), fmt, strict, fingerprint)
    return list(stays), Counter(dict(counts))


class PhysioNet2012(Dataset):
    """PhysioNet 2012 stays as token sequences (module docstring: layout, splits, rules, items).

    Args:
        root: the challenge folder (set-a/, set-b/, Outcomes-a.txt, ...) or its FHIR export.
        split: "train", "val" (from ``train_set``) or "test" (``test_set``).
        format: "csv" (the challenge files) or "fhir" (``medssm fhir export`` output).
        max_length: tokens per stay (descriptors + the most recent events), padded at the end.
        num_bins: quantile bins per variable, fitted on the train split.
        tokenizer: a fitted tokenizer (dict or JSON path, e.g. the one saved in a checkpoint); default: fit
            on the train split of these arguments.
        train_set, test_set: set folder names. val_fraction, seed, fold, num_folds: the split (splits.py).
        strict: raise on a corrupt stay instead of dropping it.
        transform: callable applied to the item dict.
    """

    task = "events"
    spatial_dims = None
    num_classes = 2
    target_names = TARGET_NAMES

    def __init__(self, root: str | Path, split: str = "train", format: str = "csv", max_length: int = 1024,
                 num_bins: int = 10, tokenizer: str | Path | dict | None = None, train_set: str = "set-a",
                 test_set: str = "set-b", val_fraction: float = 0.2, seed: int = 0, fold: int | None = None,
                 num_folds: int | None = None, strict: bool = False,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.root, self.split, self.transform = Path(root), check_split(split), transform
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.max_length = int(max_length)
        separate_test = split == "test" and num_folds is None
        by_id: dict[str, Stay] = {}
        names: dict[str, list[str]] = {}
        self.counts: Counter = Counter()
        if not (separate_test and tokenizer is not None):  # the train split is needed for the bins or the stays
            train_stays, self.counts = read_set(self.root, train_set, format, strict)
            by_id = {s.record_id: s for s in train_stays}
            if len(by_id) != len(train_stays):
                raise ValueError(f"{self.root / train_set}: duplicate RecordIDs")
            names = {p: select_cases(sorted(by_id), p, self.root, val_fraction=val_fraction, seed=seed, fold=fold,
                                     num_folds=num_folds) for p in (("train",) if separate_test else ("train", split))}
        if tokenizer is None:
            self.tokenizer = EventTokenizer.fit([by_id[n] for n in names["train"]], num_bins)
        else:
            self.tokenizer = EventTokenizer.load(tokenizer)
        if separate_test:
            stays, self.counts = read_set(self.root, test_set, format, strict)
            source = test_set
        else:
            stays, source = [by_id[n] for n in names[split]], train_set
        outcome_file = self.root / f"Outcomes-{source.split('-')[-1]}.txt"
        self.stays, self.outcomes = _with_outcomes(stays, read_outcomes(outcome_file), outcome_file)
        self.cases = [s.record_id for s in self.stays]
        self.labels = torch.tensor([int(self.outcomes[c]["In-hospital_death"]) for c in self.cases])
        self.in_channels = self.tokenizer.vocab_size
        logger.info("PhysioNet2012 %s (%s, %s): %d stays, %d deaths; dropped: %s", split, source, format,
                    len(self.cases), int(self.labels.sum()), count_summary(self.counts))

    def __len__(self) -> int:
        return len(self.stays)

    def target_table(self) -> torch.Tensor:
        """(stays, 4) float32: every item's "targets" (NaN = missing), without tokenising the stays."""
        return torch.tensor([[self.outcomes[c][k] for k in TARGETS] for c in self.cases],
                            dtype=torch.float32).reshape(len(self.cases), len(TARGETS))

    def __getitem__(self, index: int) -> dict[str, Any]:
        stay = self.stays[index]
        tokens = torch.from_numpy(self.tokenizer.encode(stay, self.max_length))
        outcome = self.outcomes[stay.record_id]
        item = {"image": tokens, "mask": tokens[:, 0] != 0, "label": self.labels[index],
                "targets": torch.tensor([outcome[k] for k in TARGETS], dtype=torch.float32),
                "name": stay.record_id}
        return self.transform(item) if self.transform is not None else item


def _with_outcomes(stays: list[Stay], outcomes: dict[str, dict[str, float]], path: Path
                   ) -> tuple[list[Stay], dict[str, dict[str, float]]]:
    """The stays (sorted by RecordID) and their outcome rows; ValueError for a stay without one."""
    missing = sorted(s.record_id for s in stays if s.record_id not in outcomes)
    if missing:
        raise ValueError(f"{path}: no outcome row for RecordIDs {missing[:10]} ({len(missing)} stays)")
    unused = len(set(outcomes) - {s.record_id for s in stays})
    if unused:
        logger.info("%s: %d outcome rows have no stay in this split", path, unused)
    stays = sorted(stays, key=lambda s: s.record_id)
    return stays, {s.record_id: outcomes[s.record_id] for s in stays}


def summary_features(stays: list[Stay]) -> tuple[np.ndarray, list[str]]:
    """Per-stay summaries for the boosted-tree anchor: for each series variable its last, first, min, max,
    mean and count (NaN where never measured; count 0), then the 5 descriptors (NaN where missing).
    Returns (stays, features) float64 and the feature names."""
    from .records import SERIES_VARIABLES

    stats = ("last", "first", "min", "max", "mean", "count")
    names = [f"{v}_{s}" for v in SERIES_VARIABLES for s in stats] + list(STATIC_VARIABLES)
    out = np.full((len(stays), len(names)), np.nan)
    for row, stay in enumerate(stays):
        for index in range(len(SERIES_VARIABLES)):
            values = stay.values[stay.variables == index]  # in time order
            base = index * len(stats)
            out[row, base + 5] = len(values)
            if len(values):
                out[row, base:base + 5] = (values[-1], values[0], values.min(), values.max(), values.mean())
        out[row, len(SERIES_VARIABLES) * len(stats):] = [stay.statics.get(n, np.nan) for n in STATIC_VARIABLES]
    return out, names

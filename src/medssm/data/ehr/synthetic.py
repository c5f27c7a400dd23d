"""Generated ICU stays in the PhysioNet/CinC 2012 file format, for tests, smoke runs and tutorials.

:func:`write_synthetic_challenge` writes ``set-a``/``set-b`` folders of ``<RecordID>.txt`` CSV files and
``Outcomes-a.txt``/``Outcomes-b.txt``, exactly the challenge's layout, so every reader, the FHIR export and
the training engine run on them as on the real files. Each stay is a pure function of (seed, RecordID):
descriptors (some -1, as in the challenge), then a few hours of events of random variables with values
inside their plausible ranges, at non-decreasing times. The death label is drawn with a probability that
rises with the stay's mean Lactate and falls with its mean GCS, so a model can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .records import RANGES, SERIES_VARIABLES

_TYPICAL = {"Lactate": (0.5, 8.0), "GCS": (3.0, 15.0), "HR": (50.0, 140.0), "Temp": (35.0, 39.5)}


def _stay_rows(rng: np.random.Generator, record_id: int, events: int) -> tuple[list[str], float]:
    """The CSV lines of one stay and its risk score."""
    age, gender = int(rng.integers(18, 91)), int(rng.integers(0, 2))
    height = -1 if rng.random() < 0.4 else round(float(rng.uniform(150, 195)), 1)
    weight = -1 if rng.random() < 0.1 else round(float(rng.uniform(45, 130)), 1)
    rows = ["Time,Parameter,Value", f"00:00,RecordID,{record_id}", f"00:00,Age,{age}", f"00:00,Gender,{gender}",
            f"00:00,Height,{height}", f"00:00,ICUType,{int(rng.integers(1, 5))}", f"00:00,Weight,{weight}"]
    minutes = np.sort(rng.integers(0, 48 * 60, size=events))
    names = rng.choice(["Lactate", "GCS", "HR", "Temp", *SERIES_VARIABLES], size=events)
    severity = float(rng.random())
    lactate, gcs = [], []
    for minute, name in zip(minutes, names, strict=True):
        low, high = _TYPICAL.get(name, RANGES[name])
        high = min(high, low + 10 * max(1.0, abs(low))) if name not in _TYPICAL else high
        value = low + (high - low) * float(np.clip(rng.normal(severity if name != "GCS" else 1 - severity, 0.15), 0, 1))
        value = round(value) if name in ("GCS", "MechVent") else round(value, 2)
        (lactate if name == "Lactate" else gcs if name == "GCS" else []).append(value)
        rows.append(f"{minute // 60:02d}:{minute % 60:02d},{name},{value:g}")
    risk = (np.mean(lactate) / 8 if lactate else severity) + (1 - np.mean(gcs) / 15 if gcs else severity)
    return rows, float(risk)


def write_synthetic_challenge(root: str | Path, stays: int = 40, events: int = 60, seed: int = 0,
                              first_id: int = 200000) -> Path:
    """Write ``stays`` generated stays into each of ``root/set-a`` and ``root/set-b`` (RecordIDs from
    ``first_id``) with ``events`` events each, and the two outcome files. Returns ``root``."""
    root = Path(root)
    record = first_id
    for part in ("a", "b"):
        folder = root / f"set-{part}"
        folder.mkdir(parents=True, exist_ok=True)
        outcomes = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
        for _ in range(stays):
            rng = np.random.default_rng([seed, record])
            rows, risk = _stay_rows(rng, record, events)
            (folder / f"{record}.txt").write_text("\n".join(rows) + "\n")
            death = int(rng.random() < 1 / (1 + np.exp(-6 * (risk - 1.0))))
            saps = -1 if rng.random() < 0.1 else int(rng.integers(5, 30))
            stay_days = int(rng.integers(2, 30))
            outcomes.append(f"{record},{saps},{int(rng.integers(0, 15))},{stay_days},"
                            f"{int(rng.integers(2, stay_days + 1)) if death else -1},{death}")
            record += 1
        (root / f"Outcomes-{part}.txt").write_text("\n".join(outcomes) + "\n")
    return root

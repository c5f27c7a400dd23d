"""ICU stays as events: the variables of PhysioNet/CinC 2012, their plausible ranges, and the cleaning rules
that both readers (the challenge's CSV files and FHIR) apply, so that one stay read either way is the same.

A :class:`Stay` is one ICU admission: its ``record_id`` (the key of its labels, never its position), its
static descriptors (Age, Gender, Height, ICUType, admission Weight; NaN where missing) and its time-series
events (minutes since admission, variable, value), in the canonical order of :func:`canonical_order`.

Cleaning rules (:func:`clean_events`, :func:`clean_statics`), each dropped value counted under the key shown:

- ``missing``: the value -1, PhysioNet's marker for "not measured", or no value at all;
- ``out_of_range:<variable>``: a value outside the variable's plausible range (:data:`RANGES`, inclusive).
  The ranges drop what cannot be a measurement of a living patient or is a unit or typing error (Temp
  -17.8 °C is 0 °F converted; pH 735 is 7.35 without its decimal point; a Height of 13 cm is inches or a
  typo) and keep every physiologically possible value, however extreme. Nothing is corrected or clipped:
  a dropped value is a missing value. tsdm's PhysioNet2012 bounds (Scholz et al.) are the starting point;
  they only require most values to be positive, which leaves e.g. Temp 2.5 °C in, so the limits here are
  tighter where the data showed errors;
- ``unknown_variable``: a parameter that is none of the 37 series or 5 descriptors (CSV), or an
  Observation code the mapping does not name (FHIR);
- ``before_admission``: an event with a negative time (FHIR; the CSV format cannot express one).

Static descriptors: in the CSV files the first row of each of Age, Gender, Height, ICUType and Weight at
time 00:00 is the descriptor; every later Weight row (including further rows at 00:00) is a series event.
Gender must be 0 (female) or 1 (male) and ICUType 1-4; anything else is missing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

STATIC_VARIABLES: tuple[str, ...] = ("Age", "Gender", "Height", "ICUType", "Weight")
CATEGORICAL_STATICS: dict[str, tuple[int, ...]] = {"Gender": (0, 1), "ICUType": (1, 2, 3, 4)}

# Bedside (charted) measurements and laboratory results: the token types of tokens.py.
BEDSIDE_VARIABLES: tuple[str, ...] = ("DiasABP", "FiO2", "GCS", "HR", "MAP", "MechVent", "NIDiasABP", "NIMAP",
                                      "NISysABP", "RespRate", "SysABP", "Temp", "Urine", "Weight")
LAB_VARIABLES: tuple[str, ...] = ("ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine",
                                  "Glucose", "HCO3", "HCT", "K", "Lactate", "Mg", "Na", "PaCO2", "PaO2", "Platelets",
                                  "SaO2", "TroponinI", "TroponinT", "WBC", "pH")
SERIES_VARIABLES: tuple[str, ...] = tuple(sorted(BEDSIDE_VARIABLES + LAB_VARIABLES, key=str.lower))
SERIES_INDEX: dict[str, int] = {name: i for i, name in enumerate(SERIES_VARIABLES)}

_PRESSURE = (1e-6, 300.0)  # mmHg: 0 is a disconnected or flushed arterial line, not a pressure
# Inclusive plausible ranges; a lower bound of 1e-6 means "strictly positive".
RANGES: dict[str, tuple[float, float]] = {
    "ALP": (1.0, 5000.0), "ALT": (1.0, 20000.0), "AST": (1.0, 20000.0), "Albumin": (0.5, 7.0),
    "BUN": (0.0, 300.0), "Bilirubin": (0.0, 80.0), "Cholesterol": (10.0, 1000.0), "Creatinine": (0.1, 30.0),
    "DiasABP": _PRESSURE, "FiO2": (0.21, 1.0), "GCS": (3.0, 15.0), "Glucose": (1e-6, 2000.0),
    "HCO3": (1e-6, 60.0), "HCT": (1e-6, 100.0), "HR": (1e-6, 300.0), "K": (1.0, 12.0),
    "Lactate": (1e-6, 40.0), "MAP": _PRESSURE, "MechVent": (0.0, 1.0), "Mg": (1e-6, 10.0),
    "NIDiasABP": _PRESSURE, "NIMAP": _PRESSURE, "NISysABP": _PRESSURE, "Na": (90.0, 200.0),
    "PaCO2": (1e-6, 200.0), "PaO2": (1e-6, 800.0), "Platelets": (1e-6, 3000.0), "RespRate": (0.0, 100.0),
    "SaO2": (20.0, 100.0), "SysABP": _PRESSURE, "Temp": (25.0, 45.0), "TroponinI": (1e-6, 100.0),
    "TroponinT": (1e-6, 100.0), "Urine": (0.0, 10000.0), "WBC": (1e-6, 500.0), "Weight": (20.0, 300.0),
    "pH": (6.5, 8.0),
}
STATIC_RANGES: dict[str, tuple[float, float]] = {"Age": (0.0, 120.0), "Height": (100.0, 250.0),
                                                  "Weight": (20.0, 300.0)}
MISSING_MARKER = -1.0


@dataclass
class Stay:
    """One ICU stay: ``record_id``, ``statics`` {descriptor: value, NaN = missing} and the series events as
    three aligned arrays: ``minutes`` (int64, since admission), ``variables`` (int64 index into
    SERIES_VARIABLES) and ``values`` (float64)."""

    record_id: str
    statics: dict[str, float] = field(default_factory=dict)
    minutes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    variables: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.minutes)

    def events(self) -> list[tuple[int, str, float]]:
        """The events as (minutes, variable name, value) tuples, in order."""
        return [(int(t), SERIES_VARIABLES[v], float(x)) for t, v, x in
                zip(self.minutes, self.variables, self.values, strict=True)]

    def is_empty(self) -> bool:
        """No series event and no known descriptor: nothing to tokenise."""
        return len(self) == 0 and all(math.isnan(v) for v in self.statics.values())


def in_range(variable: str, value: float, ranges: dict[str, tuple[float, float]] = RANGES) -> bool:
    low, high = ranges[variable]
    return low <= value <= high


def clean_statics(raw: dict[str, float | None], counts: Counter) -> dict[str, float]:
    """Every descriptor of STATIC_VARIABLES, NaN where missing (-1, absent), out of range or not a known
    category; dropped values counted in ``counts`` (see the module docstring)."""
    statics = {}
    for name in STATIC_VARIABLES:
        value = raw.get(name)
        statics[name] = math.nan
        if value is None or math.isnan(value):
            continue
        if value == MISSING_MARKER:
            counts["missing"] += 1
            continue
        valid = (value in CATEGORICAL_STATICS[name]) if name in CATEGORICAL_STATICS else \
            in_range(name, value, STATIC_RANGES)
        if not valid:
            counts[f"out_of_range:{name}"] += 1
        statics[name] = float(value) if valid else math.nan
    return statics


def clean_events(events: Iterable[tuple[float, str, float | None]], counts: Counter) -> tuple[np.ndarray, ...]:
    """(minutes, variable, value) events -> the kept ones as (minutes, variable index, value) arrays in
    canonical order; each dropped event counted in ``counts`` under its rule (module docstring)."""
    kept = []
    for minute, name, value in events:
        if name not in SERIES_INDEX:
            counts["unknown_variable"] += 1
        elif value is None or value == MISSING_MARKER or math.isnan(value):
            counts["missing"] += 1
        elif minute < 0:
            counts["before_admission"] += 1
        elif not in_range(name, value):
            counts[f"out_of_range:{name}"] += 1
        else:
            kept.append((int(minute), SERIES_INDEX[name], float(value)))
    return canonical_order(kept)


def canonical_order(events: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort (minutes, variable index, value) by time, then variable (SERIES_VARIABLES order), then value:
    an order that does not depend on how a file listed simultaneous events (FHIR resources have none)."""
    events = sorted(events)
    minutes = np.array([e[0] for e in events], dtype=np.int64)
    variables = np.array([e[1] for e in events], dtype=np.int64)
    values = np.array([e[2] for e in events], dtype=np.float64)
    return minutes, variables, values


def count_summary(counts: Counter) -> str:
    """'missing 12, out_of_range:Temp 3, ...' (largest first), or 'none'."""
    return ", ".join(f"{key} {n}" for key, n in counts.most_common() if n) or "none"

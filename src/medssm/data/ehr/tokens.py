"""EHRMamba-style tokens for ICU stays (Fallahpour et al. 2024, "EHRMamba: Towards Generalizable and
Scalable Foundation Models for Electronic Health Records", arXiv 2405.14567; their odyssey repository).

A token is a code from one vocabulary plus its type, its time and (optionally used) its value:

- code: [PAD] = 0; then one code per (static descriptor, value bin or category), with a "missing" code per
  descriptor; then ``num_bins`` codes per series variable, one per **quantile bin** of its values. As in
  EHRMamba, a measurement becomes "variable, bin" (their lab results are binned by quantiles per lab code).
  The bins' edges are fitted on the **training split only** (:meth:`EventTokenizer.fit`); a variable with
  few distinct values gets fewer bins (duplicate edges are merged), so its last codes stay unused.
- type: 0 padding, 1 static descriptor, 2 bedside measurement, 3 laboratory result (EHRMamba's token type
  embedding; their types are visit and concept kinds).
- time: hours since ICU admission (descriptors at 0); the models embed it (EHRMamba's time embedding).
- value: the measurement standardised with the training split's median and inter-quartile range per
  variable, clipped to [-5, 5] (0 for categories and missing descriptors): an addition to EHRMamba's
  bins-only tokens that the models use only when asked (``use_values=True``).

Sequence layout (``encode``): the 5 descriptor tokens first (Age, Gender, Height, ICUType, Weight), then
the series events in time order. Longer stays are truncated to ``max_length`` by keeping the descriptors
and the **most recent** events (the usual choice for a prediction at 48 h: the last hours weigh most);
shorter ones are padded at the end with zeros, so a causal model's output at a real token never depends on
the padding. The packed array is float32 (max_length, 4) with columns (code, type, hours, value); the mask
of real tokens is ``code != 0``. Codes are integers below 2**24, exact in float32.

Differences from EHRMamba: one ICU stay is one visit, so there are no visit-order, visit-segment or
inter-visit time tokens; age is a descriptor token rather than an embedding on every token; no [CLS] token
(the models pool the last real token or the mean).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .records import (
    BEDSIDE_VARIABLES,
    CATEGORICAL_STATICS,
    SERIES_VARIABLES,
    STATIC_VARIABLES,
    Stay,
)

FEATURES: tuple[str, ...] = ("code", "type", "hours", "value")
TOKEN_TYPES: dict[str, int] = {"pad": 0, "static": 1, "bedside": 2, "lab": 3}
NUM_TOKEN_TYPES = len(TOKEN_TYPES)
PAD = 0
VALUE_CLIP = 5.0
NUMERIC_STATICS = tuple(name for name in STATIC_VARIABLES if name not in CATEGORICAL_STATICS)


def _quantile_edges(values: np.ndarray, num_bins: int) -> list[float]:
    """The interior cut points of ``num_bins`` equal-frequency bins, duplicates merged ([] without values)."""
    if values.size == 0:
        return []
    cuts = np.quantile(values, np.arange(1, num_bins) / num_bins)
    return [float(c) for c in np.unique(cuts)]


def _robust_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, inter-quartile range or 1 where it is 0) of ``values``; (0, 1) without values."""
    if values.size == 0:
        return 0.0, 1.0
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return float(median), float(q75 - q25) if q75 > q25 else 1.0


@dataclass
class EventTokenizer:
    """Quantile bins and value scales per variable, fitted on training stays; encodes a stay as tokens.

    ``edges[name]``: the interior bin edges of a series variable or numeric descriptor; ``scale[name]``:
    (median, IQR). Build with :meth:`fit`; save with :meth:`to_dict` / :meth:`save`.
    """

    num_bins: int
    edges: dict[str, list[float]]
    scale: dict[str, tuple[float, float]]
    static_offsets: dict[str, int] = field(init=False)
    series_offset: int = field(init=False)
    vocab_size: int = field(init=False)

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {self.num_bins}")
        missing = sorted(set(SERIES_VARIABLES + NUMERIC_STATICS) - set(self.edges))
        if missing:
            raise ValueError(f"tokenizer edges lack variables {missing}")
        offset, self.static_offsets = 1, {}
        for name in STATIC_VARIABLES:
            self.static_offsets[name] = offset
            size = len(CATEGORICAL_STATICS[name]) if name in CATEGORICAL_STATICS else self.num_bins
            offset += size + 1  # + the descriptor's "missing" code
        self.series_offset = offset
        self.vocab_size = offset + self.num_bins * len(SERIES_VARIABLES)
        self._series_edges = [np.asarray(self.edges[n], dtype=np.float64) for n in SERIES_VARIABLES]
        self._series_scale = np.array([self.scale[n] for n in SERIES_VARIABLES], dtype=np.float64)
        self._types = np.array([TOKEN_TYPES["bedside" if n in BEDSIDE_VARIABLES else "lab"]
                                for n in SERIES_VARIABLES], dtype=np.float32)

    @classmethod
    def fit(cls, stays: Sequence[Stay], num_bins: int = 10) -> EventTokenizer:
        """Fit the bins and scales on ``stays`` (the training split: never pass validation or test stays)."""
        if not stays:
            raise ValueError("cannot fit the tokenizer on no stays")
        variables = np.concatenate([s.variables for s in stays])
        values = np.concatenate([s.values for s in stays])
        edges, scale = {}, {}
        for index, name in enumerate(SERIES_VARIABLES):
            selected = values[variables == index]
            edges[name], scale[name] = _quantile_edges(selected, num_bins), _robust_scale(selected)
        for name in NUMERIC_STATICS:
            selected = np.array([s.statics.get(name, math.nan) for s in stays], dtype=np.float64)
            selected = selected[~np.isnan(selected)]
            edges[name], scale[name] = _quantile_edges(selected, num_bins), _robust_scale(selected)
        return cls(num_bins, edges, scale)

    # ---- encoding -----------------------------------------------------------------------------------

    def static_tokens(self, stay: Stay) -> np.ndarray:
        """(5, 4) float32: one token per descriptor, at time 0."""
        rows = np.zeros((len(STATIC_VARIABLES), len(FEATURES)), dtype=np.float32)
        for i, name in enumerate(STATIC_VARIABLES):
            value = stay.statics.get(name, math.nan)
            offset = self.static_offsets[name]
            if name in CATEGORICAL_STATICS:
                categories = CATEGORICAL_STATICS[name]
                code = offset + len(categories) if math.isnan(value) else offset + categories.index(int(value))
                standardised = 0.0
            elif math.isnan(value):
                code, standardised = offset + self.num_bins, 0.0
            else:
                code = offset + int(np.searchsorted(self.edges[name], value, side="right"))
                median, iqr = self.scale[name]
                standardised = float(np.clip((value - median) / iqr, -VALUE_CLIP, VALUE_CLIP))
            rows[i] = (code, TOKEN_TYPES["static"], 0.0, standardised)
        return rows

    def series_tokens(self, stay: Stay) -> np.ndarray:
        """(events, 4) float32: one token per series event, in the stay's order."""
        variables, values = stay.variables, stay.values
        bins = np.zeros(len(values), dtype=np.int64)
        for index in np.unique(variables):
            selected = variables == index
            bins[selected] = np.searchsorted(self._series_edges[index], values[selected], side="right")
        median, iqr = self._series_scale[variables, 0], self._series_scale[variables, 1]
        rows = np.empty((len(values), len(FEATURES)), dtype=np.float32)
        rows[:, 0] = self.series_offset + variables * self.num_bins + bins
        rows[:, 1] = self._types[variables]
        rows[:, 2] = stay.minutes / 60.0
        rows[:, 3] = np.clip((values - median) / iqr, -VALUE_CLIP, VALUE_CLIP)
        return rows

    def encode(self, stay: Stay, max_length: int) -> np.ndarray:
        """(max_length, 4) float32 tokens: descriptors, then the most recent events that fit, then padding."""
        statics = self.static_tokens(stay)
        room = max_length - len(statics)
        if room < 0:
            raise ValueError(f"max_length must be at least the {len(statics)} descriptor tokens, got {max_length}")
        series = self.series_tokens(stay)
        series = series[len(series) - room:] if len(series) > room else series  # keep the most recent
        out = np.zeros((max_length, len(FEATURES)), dtype=np.float32)
        out[:len(statics)] = statics
        out[len(statics):len(statics) + len(series)] = series
        return out

    def token_name(self, code: int) -> str:
        """A readable name of a code: "[PAD]", "static:Age:3", "static:Gender:missing", "HR:7" (descriptors are
        prefixed: Weight is both a descriptor and a series)."""
        if code == PAD:
            return "[PAD]"
        if code >= self.series_offset:
            index, bin_ = divmod(code - self.series_offset, self.num_bins)
            if index >= len(SERIES_VARIABLES):
                raise ValueError(f"code {code} is outside the vocabulary of {self.vocab_size}")
            return f"{SERIES_VARIABLES[index]}:{bin_}"
        for name in reversed(STATIC_VARIABLES):
            offset = self.static_offsets[name]
            if code >= offset:
                categories = CATEGORICAL_STATICS.get(name)
                size = len(categories) if categories else self.num_bins
                part = code - offset
                return f"static:{name}:{'missing' if part == size else (categories[part] if categories else part)}"
        raise ValueError(f"code {code} is outside the vocabulary")

    # ---- saving -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins, "edges": self.edges, "scale": {k: list(v) for k, v in self.scale.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventTokenizer:
        try:
            return cls(int(data["num_bins"]), {k: [float(x) for x in v] for k, v in data["edges"].items()},
                       {k: (float(v[0]), float(v[1])) for k, v in data["scale"].items()})
        except (KeyError, TypeError, IndexError) as error:
            raise ValueError(f"not a saved EventTokenizer (keys num_bins, edges, scale): {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, source: str | Path | dict[str, Any]) -> EventTokenizer:
        """From a dict (a checkpoint's copy) or a JSON file written by :meth:`save`."""
        if isinstance(source, dict):
            return cls.from_dict(source)
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))

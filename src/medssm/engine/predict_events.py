"""``medssm predict`` for an "events" checkpoint: one probability a stay from ICU records.

Inputs (``--input``):

- the PhysioNet/CinC 2012 challenge's stay files: one ``<RecordID>.txt`` (``Time,Parameter,Value``) or a
  folder of them (e.g. ``set-b/``);
- FHIR R4: one Bundle or resource ``.json``, one ``.ndjson`` file (a bulk export), or a folder of those
  (e.g. a set folder written by ``medssm fhir export``); stays are grouped by Patient.

The stays are cleaned by the training rules (:mod:`medssm.data.ehr.records`: dropped values are counted and
logged; a challenge file whose times go backwards is a ValueError naming it, since a prediction cannot be
left out silently) and tokenised with the checkpoint's own tokenizer (the bins fitted on the run's training
split) and ``max_length``. No outcome file is read. Output: ``predictions.csv`` (case = RecordID, predicted
class, prob_0, prob_1) in the ``--output`` folder, or ``--output`` itself when it ends in ``.csv``. Several
checkpoints predict as one ensemble (the mean probability) when they share the tokenizer.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data.ehr.fhir import read_fhir_file, read_fhir_folder
from ..data.ehr.physionet2012 import read_stay_csv
from ..data.ehr.records import Stay, count_summary
from ..data.ehr.tokens import EventTokenizer
from .ensemble import EnsemblePredictor
from .files import write_text_atomic
from .outputs import CSV_NAME, check_plan, csv_text

logger = logging.getLogger(__name__)

FHIR_SUFFIXES = (".json", ".ndjson")
DEFAULT_MAX_LENGTH = 1024  # PhysioNet2012's default, for a config that does not name max_length


def read_stays(input: str | Path, counts: Counter | None = None) -> list[Stay]:
    """The stays under ``input`` (module docstring), with their empty ones left out and counted."""
    input, counts = Path(input), Counter() if counts is None else counts
    if not input.exists():
        raise FileNotFoundError(f"{input}: no such file or folder")
    if input.is_file():
        csv_files = [input] if input.suffix == ".txt" else []
        if not csv_files and input.suffix not in FHIR_SUFFIXES:
            raise ValueError(f"{input}: not a challenge stay (.txt) nor FHIR ({', '.join(FHIR_SUFFIXES)})")
    else:
        csv_files = sorted(p for p in input.glob("*.txt") if not p.name.startswith("Outcomes"))
        fhir = [p for suffix in FHIR_SUFFIXES for p in input.glob(f"*{suffix}")]
        if csv_files and fhir:
            raise ValueError(f"{input}: holds both challenge .txt stays and FHIR files; give one kind per folder")
        if not csv_files and not fhir:
            raise ValueError(f"{input}: no stays to predict (expected <RecordID>.txt challenge files or FHIR "
                             f"{', '.join(FHIR_SUFFIXES)} files)")
    if csv_files:
        stays = []
        for path in csv_files:
            stay = read_stay_csv(path, counts)
            if stay is None:
                raise ValueError(f"{path}: times go backwards; fix the file to predict this stay")
            stays.append(stay)
    elif input.is_file():
        stays = read_fhir_file(input, counts)
    else:
        stays = read_fhir_folder(input, counts)
    kept = [s for s in stays if not s.is_empty()]
    counts["empty_stay"] += len(stays) - len(kept)
    if not kept:
        raise ValueError(f"{input}: no stay with a descriptor or an event")
    names = [s.record_id for s in kept]
    if len(set(names)) != len(names):
        raise ValueError(f"{input}: RecordIDs appear twice: {sorted({n for n in names if names.count(n) > 1})[:10]}")
    return sorted(kept, key=lambda s: s.record_id)


def checkpoint_tokenizer(predictor: EnsemblePredictor) -> tuple[EventTokenizer, int]:
    """The tokenizer and max_length saved with the checkpoint(s); ValueError when the members differ."""
    saved = [meta.get("data", {}).get("tokenizer") for meta in predictor.metas]
    if saved[0] is None:
        raise ValueError(f"{predictor.names[0]}: no tokenizer saved with this events checkpoint")
    if any(other != saved[0] for other in saved[1:]):
        raise ValueError("the checkpoints were trained on different bins (tokenizers differ); an ensemble needs "
                         "runs of the same training split")
    tokenizer = EventTokenizer.load(saved[0])
    in_channels = predictor.meta["model_args"]["in_channels"]
    if tokenizer.vocab_size != in_channels:
        raise ValueError(f"{predictor.names[0]}: the tokenizer has {tokenizer.vocab_size} codes, but the model "
                         f"takes {in_channels}")
    data_args = predictor.meta["config"]["data"].get("args", {})
    return tokenizer, int(data_args.get("max_length", DEFAULT_MAX_LENGTH))


def predict_stays(predictor: EnsemblePredictor, input: str | Path, output: str | Path, overwrite: bool = False,
                  device: torch.device | str = "cpu", batch_size: int = 32) -> list[Path]:
    """Write ``predictions.csv`` for every stay under ``input`` (module docstring); returns [its path].
    An existing CSV is refused (before any work) unless ``overwrite``."""
    input, output = Path(input), Path(output)
    to_csv = output.name.lower().endswith(".csv")
    if not to_csv and output.is_file():
        raise ValueError(f"{output}: an events prediction writes a folder or a .csv file, but this is a file")
    csv_path = output if to_csv else output / CSV_NAME
    check_plan([(input, [csv_path])], overwrite)
    tokenizer, max_length = checkpoint_tokenizer(predictor)
    counts: Counter = Counter()
    stays = read_stays(input, counts)
    logger.info("%s: %d stays; dropped: %s", input, len(stays), count_summary(counts))
    rows = []
    for start in range(0, len(stays), batch_size):
        chunk = stays[start:start + batch_size]
        tokens = torch.from_numpy(np.stack([tokenizer.encode(s, max_length) for s in chunk])).to(device)
        prob = predictor(tokens, "events").float().cpu().numpy()
        rows += [(s.record_id, p) for s, p in zip(chunk, prob, strict=True)]
    write_text_atomic(csv_path, csv_text(rows))
    logger.info("%d stays -> %s", len(rows), csv_path)
    return [csv_path]

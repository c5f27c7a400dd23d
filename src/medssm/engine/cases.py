"""The cases of a prediction input: image files, DICOM series folders, and nnU-Net channel files grouped into one
case each (see :func:`list_cases`), and loading a case's image."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom.misc
import torch

from medssm.data.io import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, LoadedImage, image_kind, load_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One case to predict: its input file (or series folder) and the base name of its outputs."""

    input: Path
    kind: str  # "raster" | "nifti" | "dicom"
    name: str  # output base name: the file name without its image suffix, or the series folder's name
    channel_files: tuple[Path, ...] = ()  # nnU-Net channels _0001, _0002, ... stacked after ``input`` (_0000)


def matched_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """The suffix among ``suffixes`` that ``name`` ends with (case-insensitive, longest first), else None."""
    lower = name.lower()
    # Longest first, so that "x.nii.gz" matches ".nii.gz" and not a shorter suffix.
    return next((s for s in sorted(suffixes, key=len, reverse=True) if lower.endswith(s)), None)


def _is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128), the test MONAI applies to series files."""
    try:
        return path.is_file() and bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def is_dicom_series(folder: str | Path) -> bool:
    """True if ``folder`` holds DICOM slices directly (files with the DICOM preamble, any or no extension).

    Only files without a NIfTI or raster extension are probed, so a folder of PNG cases costs no reads. A folder
    with any DICOM file in it is one series (MONAI reads every DICOM file in it and stacks the slices); to
    predict single DICOM files separately, pass them one at a time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for child in folder.iterdir():
        if child.name.startswith(".") or matched_suffix(child.name, NIFTI_SUFFIXES + RASTER_SUFFIXES):
            continue
        if _is_dicom_file(child):
            return True
    return False


def _case(path: Path) -> Case:
    if path.is_dir():
        # abspath (not resolve) so that "." and "ct1/" name the folder itself without following links.
        return Case(path, "dicom", Path(os.path.abspath(path)).name)
    kind = image_kind(path)  # ValueError naming the file for an unsupported type
    suffix = matched_suffix(path.name, {"nifti": NIFTI_SUFFIXES, "dicom": DICOM_SUFFIXES,
                                         "raster": RASTER_SUFFIXES}[kind])
    return Case(path, kind, path.name[: len(path.name) - len(suffix)])


def list_cases(input: str | Path) -> list[Path]:
    """The cases under ``input``: itself if it is an image file or a DICOM series folder, else the folder's files.

    In a folder of cases each supported file (NIfTI, DICOM, raster) and each subfolder that is a DICOM series is
    one case, in name order; other files and subfolders are skipped with a logged warning (subfolders are not
    searched further); hidden files (".name") are skipped silently. Raises FileNotFoundError for a missing path,
    ValueError for an unsupported file or a folder with nothing usable.
    """
    return [case.input for case in find_cases(Path(input))]


def find_cases(input: Path, channels: int = 1) -> list[Case]:
    if not input.exists():
        raise FileNotFoundError(f"{input}: no such file or folder")
    match = _CHANNEL_FILE.match(input.name) if input.is_file() and channels > 1 else None
    if match:  # one channel file of an nnU-Net case names the case: take its sibling channel files
        siblings = [c for c in _list_cases(input.parent)
                    if (m := _CHANNEL_FILE.match(c.input.name)) is not None and m[1] == match[1]]
        return _group_channels(siblings, channels)
    if input.is_file() or is_dicom_series(input):
        return [_case(input)]
    return _group_channels(_list_cases(input), channels)


# nnU-Net names the channels of case X as X_0000.nii.gz, X_0001.nii.gz, ...
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})(\.nii(\.gz)?)$", re.IGNORECASE)


def _group_channels(cases: list[Case], channels: int) -> list[Case]:
    """With a multi-channel model, stack nnU-Net channel files X_0000 ... X_{channels-1} into one case X."""
    if channels == 1:
        return cases
    groups: dict[str, dict[int, Case]] = {}
    grouped = []
    for case in cases:
        match = _CHANNEL_FILE.match(case.input.name) if case.kind == "nifti" else None
        if match is None:
            grouped.append(case)  # one file holding every channel (or a series); checked when loaded
            continue
        groups.setdefault(match[1], {})[int(match[2])] = case
    for name, by_index in sorted(groups.items()):
        missing = [f"{name}_{i:04d}" for i in range(channels) if i not in by_index]
        if missing:
            raise ValueError(f"case {name}: the model takes {channels} channels but {', '.join(missing)} "
                             f"is missing next to {by_index[min(by_index)].input}")
        extra = [i for i in sorted(by_index) if i >= channels]
        if extra:
            raise ValueError(f"case {name}: {by_index[extra[0]].input} is channel {extra[0]}, but the model takes "
                             f"{channels} channels")
        first = by_index[0]
        grouped.append(Case(first.input, "nifti", name, tuple(by_index[i].input for i in range(1, channels))))
    return sorted(grouped, key=lambda c: c.input.name)


def _list_cases(input: Path) -> list[Case]:
    cases = []
    for child in sorted(input.iterdir()):
        if child.name.startswith("."):
            continue  # .DS_Store, our own ".name.partial.ext" temporaries
        if child.is_dir():
            if is_dicom_series(child):
                cases.append(_case(child))
            else:
                logger.warning("%s: skipped (a folder that is not a DICOM series; subfolders are not searched)",
                               child)
            continue
        try:
            cases.append(_case(child))
        except ValueError:
            logger.warning("%s: skipped (unsupported file type)", child)
    if not cases:
        raise ValueError(f"{input}: no images to predict (expected NIfTI, DICOM or raster files, or DICOM series "
                         "folders)")
    return cases


def load_case(case: Case) -> LoadedImage:
    """The case's image; nnU-Net channel files are stacked on the channel axis (geometry from _0000)."""
    loaded = load_image(case.input)
    if not case.channel_files:
        return loaded
    arrays = [loaded.array]
    for path in case.channel_files:
        array = load_image(path).array
        if array.shape[1:] != loaded.array.shape[1:]:
            raise ValueError(f"{path}: shape {tuple(array.shape[1:])} differs from {case.input}'s "
                             f"{tuple(loaded.array.shape[1:])}")
        arrays.append(array)
    return replace(loaded, array=torch.cat(arrays))

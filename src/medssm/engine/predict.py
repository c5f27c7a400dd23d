"""Prediction over image files and folders, written back in the input's format and geometry.

``predict_path(input, output, predict_fn)`` runs a caller-supplied ``predict_fn`` (the model with its sliding
window and test-time augmentation already wrapped in) on every case under ``input`` and writes:

============================  ==============================  =======================================
input case                    segmentation mask               ``probabilities=True`` adds
============================  ==============================  =======================================
``x.nii`` / ``x.nii.gz``      ``x.nii`` / ``x.nii.gz``         ``x_prob.nii.gz`` (classes on dim 4)
DICOM series folder ``ct1/``  ``ct1.nii.gz``                  ``ct1_prob.nii.gz``
DICOM file ``a.dcm``          ``a.nii.gz`` (one-slice 3D)     ``a_prob.nii.gz``
``img.png`` / .jpg/.tif/...   ``img.png`` (always PNG)        ``img_prob.npz`` (key "probabilities")
============================  ==============================  =======================================

NIfTI masks keep the input's affine and header (qform/sform codes, pixdim, units); masks from DICOM get the
series' RAS affine with qform/sform code 1 (scanner). Raster masks are lossless PNG of the input's height and
width: 0/255 for a binary task, class indices otherwise. Classification writes one ``predictions.csv``;
restoration writes the restored image (NIfTI float32, or the raster's own dtype).

Every file goes through :func:`medssm.engine.files.atomic_path`: a case that fails leaves nothing behind,
cases finished before it stay, and existing outputs are refused before any work unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from medssm.data.io import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    LoadedImage,
    image_kind,
    load_image,
)
from medssm.engine.files import atomic_path, check_output, write_text_atomic

logger = logging.getLogger(__name__)

TASKS = ("segmentation", "classification", "restoration")
# Masks and restored images must be lossless, so an explicit raster output file may only use these.
LOSSLESS_RASTER_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
CSV_NAME = "predictions.csv"

PredictFn = Callable[[torch.Tensor], torch.Tensor]
Preprocess = Callable[[LoadedImage], torch.Tensor]


@dataclass(frozen=True)
class _Case:
    input: Path
    kind: str  # "raster" | "nifti" | "dicom"
    name: str  # output base name: the file name without its image suffix, or the series folder's name
    channel_files: tuple[Path, ...] = ()  # nnU-Net channels _0001, _0002, ... stacked after ``input`` (_0000)


# ----------------------------------------------------------------------------------------------- finding cases


def _matched_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    lower = name.lower()
    # Longest first, so that "x.nii.gz" matches ".nii.gz" and not a shorter suffix.
    return next((s for s in sorted(suffixes, key=len, reverse=True) if lower.endswith(s)), None)


def _is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128), the test MONAI applies to series files."""
    import pydicom.misc

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
        if child.name.startswith(".") or _matched_suffix(child.name, NIFTI_SUFFIXES + RASTER_SUFFIXES):
            continue
        if _is_dicom_file(child):
            return True
    return False


def _case(path: Path) -> _Case:
    if path.is_dir():
        # abspath (not resolve) so that "." and "ct1/" name the folder itself without following links.
        return _Case(path, "dicom", Path(os.path.abspath(path)).name)
    kind = image_kind(path)  # ValueError naming the file for an unsupported type
    suffix = _matched_suffix(path.name, {"nifti": NIFTI_SUFFIXES, "dicom": DICOM_SUFFIXES,
                                         "raster": RASTER_SUFFIXES}[kind])
    return _Case(path, kind, path.name[: len(path.name) - len(suffix)])


def list_cases(input: str | Path) -> list[Path]:
    """The cases under ``input``: itself if it is an image file or a DICOM series folder, else the folder's files.

    In a folder of cases each supported file (NIfTI, DICOM, raster) and each subfolder that is a DICOM series is
    one case, in name order; other files and subfolders are skipped with a logged warning (subfolders are not
    searched further); hidden files (".name") are skipped silently. Raises FileNotFoundError for a missing path,
    ValueError for an unsupported file or a folder with nothing usable.
    """
    return [case.input for case in _find_cases(Path(input))]


def _find_cases(input: Path, channels: int = 1) -> list[_Case]:
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


def _group_channels(cases: list[_Case], channels: int) -> list[_Case]:
    """With a multi-channel model, stack nnU-Net channel files X_0000 ... X_{channels-1} into one case X."""
    if channels == 1:
        return cases
    groups: dict[str, dict[int, _Case]] = {}
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
        grouped.append(_Case(first.input, "nifti", name, tuple(by_index[i].input for i in range(1, channels))))
    return sorted(grouped, key=lambda c: c.input.name)


def _list_cases(input: Path) -> list[_Case]:
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


# ----------------------------------------------------------------------------------------------- output names


def _looks_like_file(path: Path) -> bool:
    if path.is_dir():
        return False
    return _matched_suffix(path.name, NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES + (".csv", ".npz")) is not None


def _default_name(case: _Case, task: str) -> str:
    if case.kind == "nifti":
        return case.name + (".nii" if case.input.name.lower().endswith(".nii") else ".nii.gz")
    if case.kind == "dicom":
        return case.name + ".nii.gz"
    # Raster: PNG, so masks stay lossless; a restored TIFF stays TIFF to keep 16-bit/float depth.
    suffix = _matched_suffix(case.input.name, _TIFF_SUFFIXES)
    return case.name + (suffix if task == "restoration" and suffix else ".png")


def _check_explicit_output(case: _Case, output: Path) -> None:
    allowed = NIFTI_SUFFIXES if case.kind in ("nifti", "dicom") else LOSSLESS_RASTER_SUFFIXES
    if _matched_suffix(output.name, allowed) is None:
        raise ValueError(f"{output}: output for {case.kind} input {case.input} must end with one of "
                         f"{', '.join(allowed)}")


def _prob_path(main: Path, kind: str) -> Path:
    suffix = _matched_suffix(main.name, NIFTI_SUFFIXES + RASTER_SUFFIXES) or main.suffix
    base = main.name[: len(main.name) - len(suffix)]
    return main.with_name(base + ("_prob.npz" if kind == "raster" else "_prob.nii.gz"))


def _plan(cases: list[_Case], single: bool, output: Path, task: str,
          probabilities: bool) -> list[tuple[_Case, list[Path]]]:
    """Output paths of each case (mask first, then probabilities); the CSV for classification is separate."""
    to_file = single and _looks_like_file(output)
    if not single and _looks_like_file(output):
        raise ValueError(f"{output}: the input holds several cases, so the output must be a folder")
    if output.is_file() and not to_file:
        raise ValueError(f"{output}: output must be a folder, but it is an existing file")
    plan = []
    for case in cases:
        if to_file:
            _check_explicit_output(case, output)
            main = output
        else:
            main = output / _default_name(case, task)
        paths = [main]
        if probabilities and task == "segmentation":
            paths.append(_prob_path(main, case.kind))
        plan.append((case, paths))
    return plan


def _check_plan(paths_by_input: list[tuple[Path, list[Path]]], overwrite: bool) -> None:
    """Refuse collisions, writing over an input, and existing outputs, before any case is run."""
    inputs = {Path(p).resolve() for p, _ in paths_by_input}
    seen: dict[Path, Path] = {}
    for source, paths in paths_by_input:
        for path in paths:
            key = path.resolve()
            if key in seen:
                raise ValueError(f"{seen[key]} and {source} would both be written to {path}; rename one of them")
            seen[key] = source
            if key in inputs:
                raise ValueError(f"{path}: output would replace an input; choose another output folder")
            if path.is_dir():
                raise ValueError(f"{path}: an output file would replace an existing folder")
            check_output(path, overwrite, "output")


# ----------------------------------------------------------------------------------------------- running


def _load_case(case: _Case) -> LoadedImage:
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


def default_preprocess(loaded: LoadedImage) -> torch.Tensor:
    """The image the model sees, (C, *spatial) float32: raster /255 (8-bit) or /65535 (16-bit); volumes as read.

    Restoration writes raster results back with the same factor, so a custom ``preprocess`` for a restoration
    model should keep raster intensities in [0, 1] of the file's integer range.
    """
    return loaded.array / _raster_scale(loaded) if loaded.kind == "raster" else loaded.array


def _raster_scale(loaded: LoadedImage) -> float:
    return {"uint8": 255.0, "uint16": 65535.0}.get(loaded.meta.get("dtype", ""), 1.0)


def _run(predict_fn: PredictFn, image: torch.Tensor, loaded: LoadedImage, task: str) -> np.ndarray:
    """predict_fn on (1, C, *spatial); returns its single result as float32 NumPy, (K,) or (K, *spatial)."""
    if not isinstance(image, torch.Tensor) or image.ndim != loaded.array.ndim:
        raise ValueError(f"preprocess must return a (C, *spatial) tensor, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    spatial = tuple(loaded.array.shape[1:])
    if task != "classification" and tuple(image.shape[1:]) != spatial:
        # The result is written on the input's grid, so preprocess may not resample for these tasks.
        raise ValueError(f"preprocess changed the spatial shape {spatial} to {tuple(image.shape[1:])}")
    with torch.no_grad():
        result = predict_fn(image.float().unsqueeze(0))
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"predict_fn must return a tensor, got {type(result).__name__}")
    if task == "classification":
        if result.ndim != 2 or result.shape[0] != 1:
            raise ValueError(f"predict_fn must return (1, classes) for classification, got {tuple(result.shape)}")
    elif result.ndim != image.ndim + 1 or result.shape[0] != 1 or tuple(result.shape[2:]) != spatial:
        raise ValueError(f"predict_fn must return (1, K, {', '.join(map(str, spatial))}), "
                         f"got {tuple(result.shape)}")
    return result[0].detach().float().cpu().numpy()


def _mask(prob: np.ndarray) -> np.ndarray:
    """Class indices (*spatial) from (K, *spatial) probabilities; K == 1 is a foreground probability (> 0.5)."""
    if prob.shape[0] == 1:
        return (prob[0] > 0.5).astype(np.uint8)
    labels = prob.argmax(axis=0)
    return labels.astype(np.uint8 if prob.shape[0] <= 256 else np.int16)


def _channels_last(array: np.ndarray) -> np.ndarray:
    """(K, *spatial) -> (*spatial padded to 3D, K): NIfTI keeps x, y, z in dims 1-3, so classes go on dim 4."""
    spatial = array.shape[1:] + (1,) * (3 - (array.ndim - 1))
    return np.moveaxis(array.reshape(array.shape[:1] + spatial), 0, -1)


def _as_volume(array: np.ndarray) -> np.ndarray:
    """Add the slice axis to a 2D DICOM result, so it is written as a one-slice 3D NIfTI."""
    return array[..., None] if array.ndim == 2 else array


def _affine_4x4(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (4, 4):
        return affine
    out = np.eye(4)  # a 2D (3, 3) affine: keep x/y, unit slice axis
    out[:2, :2], out[:2, 3] = affine[:2, :2], affine[:2, 2]
    return out


def _nifti_image(data: np.ndarray, loaded: LoadedImage):
    """A NIfTI image of ``data`` on the input's grid: the input's own header for NIfTI, the RAS affine for DICOM."""
    import nibabel as nib

    if loaded.kind == "nifti":
        source = nib.load(loaded.path)  # header only; the voxels are not read again
        header = source.header.copy()
        header.set_data_dtype(data.dtype)
        # The input's display window and intent describe intensities, not labels or probabilities.
        header["cal_min"], header["cal_max"] = 0, 0
        header.set_intent("none")
        image_class = nib.Nifti2Image if isinstance(source, nib.Nifti2Image) else nib.Nifti1Image
        # Passing the header's own affine keeps its qform/sform codes (nibabel only rewrites them on a mismatch).
        return image_class(data, source.affine, header=header)
    affine = _affine_4x4(loaded.affine)
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)  # scanner coordinates, as dcm2niix writes them
    image.set_qform(affine, code=1)
    return image


def _restored_raster(restored: np.ndarray, loaded: LoadedImage) -> np.ndarray:
    """(C, H, W) model output -> pixels in the input's dtype: undo the default scaling, round, clip to the dtype."""
    dtype = np.dtype(loaded.meta.get("dtype", "uint8"))
    pixels = restored * _raster_scale(loaded)
    if dtype == np.bool_:
        dtype, pixels = np.dtype(np.uint8), pixels * 255  # a 1-bit image is written as 8-bit grey
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        pixels = np.clip(np.rint(pixels), info.min, info.max)
    pixels = pixels.astype(dtype)
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def _write_case(result: np.ndarray, loaded: LoadedImage, paths: list[Path], task: str) -> None:
    """Write one case's files; all are renamed into place only after every one of them was written."""
    import nibabel as nib
    from PIL import Image

    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(atomic_path(path)) for path in paths]
        volume = loaded.kind != "raster"
        if task == "restoration":
            if volume:
                data = result.astype(np.float32)
                data = _as_volume(data[0]) if data.shape[0] == 1 else _channels_last(data)
                nib.save(_nifti_image(data, loaded), temps[0])
            else:
                Image.fromarray(_restored_raster(result, loaded)).save(temps[0])
            return
        mask = _mask(result)
        if volume:
            nib.save(_nifti_image(_as_volume(mask) if loaded.kind == "dicom" else mask, loaded), temps[0])
        else:
            classes = result.shape[0]
            if classes <= 2:
                pixels = mask * np.uint8(255)  # binary: 0/255, visible in any viewer
            else:
                pixels = mask.astype(np.uint8 if classes <= 256 else np.uint16)  # class indices ("L" or "I;16")
            Image.fromarray(pixels).save(temps[0])
        if len(temps) > 1:
            if volume:
                nib.save(_nifti_image(_channels_last(result.astype(np.float32)), loaded), temps[1])
            else:
                np.savez_compressed(temps[1], probabilities=result.astype(np.float32))


def _csv_text(rows: list[tuple[str, np.ndarray]]) -> str:
    classes = {len(prob) for _, prob in rows}
    if len(classes) != 1:
        raise ValueError(f"predict_fn returned different numbers of classes across cases: {sorted(classes)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "predicted"] + [f"prob_{k}" for k in range(classes.pop())])
    for case, prob in rows:
        writer.writerow([case, int(prob.argmax())] + [f"{p:.6g}" for p in prob])
    return buffer.getvalue()


def predict_path(
    input: str | Path,
    output: str | Path,
    predict_fn: PredictFn,
    task: str = "segmentation",
    probabilities: bool = False,
    overwrite: bool = False,
    preprocess: Preprocess | None = None,
    channels: int = 1,
) -> list[Path]:
    """Predict every case under ``input`` and write the results under ``output``; return the written paths.

    ``input``: a NIfTI, DICOM or raster file, a DICOM series folder, or a folder of such cases (see
    :func:`list_cases`). ``output``: for a single case, a file (NIfTI suffix for NIfTI/DICOM input, .png/.tif/.bmp
    for raster input) or a folder; for a folder of cases, a folder. In a folder each case writes its own name
    (``x.nii.gz`` -> ``x.nii.gz``, series ``ct1/`` and ``a.dcm`` -> ``ct1.nii.gz``, ``a.nii.gz``, any raster
    -> ``<stem>.png``). Classification writes ``<output>/predictions.csv`` (or ``output`` itself if it ends in
    .csv) with columns case, predicted, prob_0..prob_{K-1}.

    ``predict_fn(image)``: image (1, C, *spatial) float32 on the CPU -> (1, K, *spatial) class probabilities
    (segmentation), (1, K) probabilities (classification) or (1, C', *spatial) the restored image
    (restoration). It runs under ``torch.no_grad``. ``preprocess(loaded) -> (C, *spatial)``: the model's input
    (default :func:`default_preprocess`); for segmentation and restoration it must keep the spatial shape.

    ``probabilities`` (segmentation only): also write the (K, *spatial) probabilities: volumes as
    ``<name>_prob.nii.gz`` float32 (x, y, z, K) with the mask's affine; raster as ``<name>_prob.npz`` with key
    "probabilities" (K, H, W) float32.

    ``channels`` > 1 (the model's input channels): NIfTI files named like nnU-Net's ``X_0000.nii.gz``,
    ``X_0001.nii.gz``, ... are stacked into one case ``X`` (written as ``X.nii.gz`` with _0000's geometry);
    naming any one of them as ``input`` predicts that case. A missing channel file is a ValueError.

    Raises FileExistsError (before any prediction) for an existing output unless ``overwrite``; ValueError for
    unsupported inputs, mismatched output suffixes or clashing output names; RuntimeError naming the input
    file when a case fails (that case leaves no file; earlier cases keep theirs).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if probabilities and task == "restoration":
        raise ValueError("probabilities=True applies to segmentation (classification always writes them)")
    input, output = Path(input), Path(output)
    preprocess = preprocess or default_preprocess
    cases = _find_cases(input, channels)
    single = input.is_file() or is_dicom_series(input)

    if task == "classification":
        to_csv = output.name.lower().endswith(".csv")
        if not to_csv and (output.is_file() or _looks_like_file(output)):
            raise ValueError(f"{output}: classification output must be a folder or a .csv file")
        csv_path = output if to_csv else output / CSV_NAME
        _check_plan([(input, [csv_path])], overwrite)
        plan = [(case, []) for case in cases]
    else:
        plan = _plan(cases, single, output, task, probabilities)
        _check_plan([(case.input, paths) for case, paths in plan], overwrite)

    written: list[Path] = []
    rows: list[tuple[str, np.ndarray]] = []
    for case, paths in plan:
        loaded = _load_case(case)  # its errors already name the file
        try:
            result = _run(predict_fn, preprocess(loaded), loaded, task)
            if task == "classification":
                rows.append((case.input.name, result))
                logger.info("%s: class %d (p=%.3f)", case.input, int(result.argmax()), float(result.max()))
                continue
            _write_case(result, loaded, paths, task)
        except Exception as error:
            raise RuntimeError(f"{case.input}: prediction failed ({type(error).__name__}: {error})") from error
        written.extend(paths)
        logger.info("%s -> %s", case.input, ", ".join(str(p) for p in paths))
    if task == "classification":
        write_text_atomic(csv_path, _csv_text(rows))
        written.append(csv_path)
        logger.info("%d cases -> %s", len(rows), csv_path)
    return written


def predict_checkpoint(checkpoint: str | Path, input: str | Path, output: str | Path, probabilities: bool = False,
                       overwrite: bool = False, tta: bool = False, roi_size: Sequence[int] | None = None,
                       device: str = "cpu") -> list[Path]:
    """``medssm predict``: load a checkpoint and run :func:`predict_path` with the run's own preprocessing
    (the evaluation transforms of its config: intensity normalisation per modality) and inference settings
    (sliding window over the training patch size, overlap, optional flip TTA)."""
    from ..data.transforms import eval_transforms
    from .checkpoint import load_model
    from .config import config_from_dict
    from .inference import infer
    from .trainer import roi_size as config_roi_size

    model, meta = load_model(checkpoint, device)
    config = config_from_dict(meta["config"], f"{checkpoint} config")
    task = meta["task"]
    spatial_dims = meta["model_args"]["spatial_dims"]
    in_channels = meta["model_args"]["in_channels"]
    transform = eval_transforms(task, spatial_dims, modality=config.transforms.modality)
    roi = tuple(roi_size) if roi_size else config_roi_size(config, task)
    inf = config.inference

    def preprocess(loaded: LoadedImage) -> torch.Tensor:
        image = default_preprocess(loaded)
        if image.ndim - 1 != spatial_dims:
            raise ValueError(f"{loaded.path}: a {image.ndim - 1}D image, but the model is {spatial_dims}D")
        if image.shape[0] != in_channels:
            raise ValueError(f"{loaded.path}: {image.shape[0]} channel(s), but the model expects {in_channels} "
                             "(one file per case holding all channels)")
        return transform({"image": image})["image"] if transform is not None else image

    def predict_fn(image: torch.Tensor) -> torch.Tensor:
        return infer(model, image.to(device), task, roi_size=roi, overlap=inf.overlap,
                     sw_batch_size=inf.sw_batch_size, tta_flips=tta or inf.tta).float().cpu()

    file_task = "classification" if task == "multilabel" else task
    return predict_path(input, output, predict_fn, task=file_task, probabilities=probabilities,
                        overwrite=overwrite, preprocess=preprocess, channels=in_channels)

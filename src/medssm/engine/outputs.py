"""Where prediction writes each case (:func:`plan_outputs`, :func:`check_plan`) and how: masks, probabilities and
restored images in the input's format and geometry (:func:`write_case`), and the classification CSV."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medssm.data.io import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, LoadedImage
from medssm.engine.cases import Case, matched_suffix
from medssm.engine.files import atomic_path, check_output

# Masks and restored images must be lossless, so an explicit raster output file may only use these.
LOSSLESS_RASTER_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
CSV_NAME = "predictions.csv"
FAILED_NAME = "failed.json"  # the cases a prediction with continue_on_error could not do


def looks_like_file(path: Path) -> bool:
    """True for a path that names an image, CSV or NPZ file rather than a folder."""
    if path.is_dir():
        return False
    return matched_suffix(path.name, NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES + (".csv", ".npz")) is not None


def _default_name(case: Case, task: str) -> str:
    if case.kind == "nifti":
        return case.name + (".nii" if case.input.name.lower().endswith(".nii") else ".nii.gz")
    if case.kind == "dicom":
        return case.name + ".nii.gz"
    # Raster: PNG, so masks stay lossless; a restored TIFF stays TIFF to keep 16-bit/float depth.
    suffix = matched_suffix(case.input.name, _TIFF_SUFFIXES)
    return case.name + (suffix if task == "restoration" and suffix else ".png")


def _check_explicit_output(case: Case, output: Path) -> None:
    allowed = NIFTI_SUFFIXES if case.kind in ("nifti", "dicom") else LOSSLESS_RASTER_SUFFIXES
    if matched_suffix(output.name, allowed) is None:
        raise ValueError(f"{output}: output for {case.kind} input {case.input} must end with one of "
                         f"{', '.join(allowed)}")


def _prob_path(main: Path, kind: str) -> Path:
    suffix = matched_suffix(main.name, NIFTI_SUFFIXES + RASTER_SUFFIXES) or main.suffix
    base = main.name[: len(main.name) - len(suffix)]
    return main.with_name(base + ("_prob.npz" if kind == "raster" else "_prob.nii.gz"))


def plan_outputs(cases: list[Case], single: bool, output: Path, task: str,
          probabilities: bool) -> list[tuple[Case, list[Path]]]:
    """Output paths of each case (mask first, then probabilities); the CSV for classification is separate."""
    to_file = single and looks_like_file(output)
    if not single and looks_like_file(output):
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


def check_plan(paths_by_input: list[tuple[Path, list[Path]]], overwrite: bool) -> None:
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


def raster_scale(loaded: LoadedImage) -> float:
    """The factor between a raster's integer pixels and [0, 1]: 255 (8-bit), 65535 (16-bit), else 1."""
    return {"uint8": 255.0, "uint16": 65535.0}.get(loaded.meta.get("dtype", ""), 1.0)


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
    pixels = restored * raster_scale(loaded)
    if dtype == np.bool_:
        dtype, pixels = np.dtype(np.uint8), pixels * 255  # a 1-bit image is written as 8-bit grey
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        pixels = np.clip(np.rint(pixels), info.min, info.max)
    pixels = pixels.astype(dtype)
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def write_case(result: np.ndarray, loaded: LoadedImage, paths: list[Path], task: str) -> None:
    """Write one case's files; all are renamed into place only after every one of them was written."""
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


def read_csv_rows(path: Path) -> list[tuple[str, np.ndarray]]:
    """The (case name, probabilities) rows of a predictions.csv written by :func:`csv_text`."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["case", "predicted"]:
            raise ValueError(f"{path}: not a medssm predictions.csv (header {header})")
        return [(row[0], np.array([float(v) for v in row[2:]], dtype=np.float32)) for row in reader if row]


def csv_text(rows: list[tuple[str, np.ndarray]]) -> str:
    """predictions.csv: a row (case, predicted class, prob_0..prob_{K-1}) per (case name, (K,) probabilities)."""
    classes = {len(prob) for _, prob in rows}
    if len(classes) != 1:
        raise ValueError(f"predict_fn returned different numbers of classes across cases: {sorted(classes)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "predicted"] + [f"prob_{k}" for k in range(classes.pop())])
    for case, prob in rows:
        writer.writerow([case, int(prob.argmax())] + [f"{p:.6g}" for p in prob])
    return buffer.getvalue()



def write_restored_like(result: np.ndarray, source: LoadedImage, path: Path) -> None:
    """Write a restored raster ``result`` (C, H, W) in [0, 1] to ``path`` (a lossless raster suffix) in
    ``source``'s pixel type: 8-bit in, 8-bit out; 16-bit in, 16-bit out (rounded and clipped), atomically."""
    if source.kind != "raster":
        raise ValueError(f"{source.path}: write_restored_like writes rasters, got a {source.kind} input")
    if matched_suffix(path.name, LOSSLESS_RASTER_SUFFIXES) is None:
        raise ValueError(f"{path}: a restored image must end with one of {', '.join(LOSSLESS_RASTER_SUFFIXES)}")
    with atomic_path(path) as temp:
        Image.fromarray(_restored_raster(result, source)).save(temp)

"""Read one medical image file (or DICOM series folder) as a channel-first tensor with its geometry.

Raster images (PNG, JPG, TIF, GIF, BMP) are read with Pillow in (height, width) order, so that what is read
can be written back pixel for pixel. Volumes (NIfTI, single DICOM files, DICOM series folders) go through
MONAI's ``LoadImage`` (nibabel and pydicom readers), which gives the affine in RAS world coordinates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage
from PIL import Image, UnidentifiedImageError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class LoadedImage:
    """A loaded image: ``array`` (channels, *spatial) float32 and the geometry needed to write results back.

    ``kind`` is "raster", "nifti" or "dicom"; ``affine`` is the (4, 4) voxel-to-world matrix (identity for
    raster images); ``meta`` holds the reader's header fields (MONAI's meta dict for volumes).
    """

    array: torch.Tensor
    path: Path
    kind: str
    affine: np.ndarray
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1


def image_kind(path: str | Path) -> str:
    """"raster", "nifti" or "dicom" from the file name (a folder is a DICOM series); ValueError otherwise."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    raise ValueError(f"{path}: unsupported file type; expected a NIfTI ({', '.join(NIFTI_SUFFIXES)}), DICOM "
                     f"(.dcm or a series folder) or raster image ({', '.join(RASTER_SUFFIXES)})")


def load_image(path: str | Path) -> LoadedImage:
    """Load a raster image, NIfTI file, DICOM file or DICOM series folder.

    Returns a :class:`LoadedImage` whose array is (channels, H, W) for raster images, and (channels, *spatial)
    in MONAI's voxel order (i, j[, k]) for NIfTI and DICOM, the order the affine describes. For DICOM that
    order is (column, row[, slice]): a 2D DICOM comes out as the transpose of pydicom's ``pixel_array``
    (rescale slope/intercept applied). Raises FileNotFoundError for a missing path and ValueError naming the
    file for an unsupported, unreadable or truncated one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = image_kind(path)
    if kind == "raster":
        return _load_raster(path)
    return _load_volume(path, kind)


def read_json(path: str | Path) -> Any:
    """The parsed JSON file at ``path``; ValueError naming the file for text that is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def read_raster(path: str | Path, mode: str | None = None) -> np.ndarray:
    """Pixels of a raster file as a NumPy array (H, W) or (H, W, C); ``mode`` converts first (e.g. "L", "RGB").

    Palette images are returned as palette indices unless a mode is given. Truncated or corrupt files raise
    ValueError naming the file.
    """
    return read_raster_pixels(Path(path), lambda source_mode: mode)[0]


def read_raster_pixels(path: Path, choose_mode: Callable[[str], str | None]) -> tuple[np.ndarray, str]:
    """Pixels converted to ``choose_mode(source_mode)`` (None: as stored), and the source mode."""
    try:
        with Image.open(path) as image:
            source_mode = image.mode
            mode = choose_mode(source_mode)
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            return np.array(image), source_mode
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        # A cut header fails in Image.open (UnidentifiedImageError), cut pixel data in decoding (OSError).
        raise ValueError(f"{path}: cannot read image ({error})") from error


def _load_raster(path: Path) -> LoadedImage:
    # Grey stays one channel (keeping 16-bit and float depth); colour and palette images become RGB.
    pixels, source_mode = read_raster_pixels(
        path, lambda source: None if source in ("L", "I", "I;16", "I;16B", "F", "1") else "RGB")
    array = pixels.astype(np.float32)
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return LoadedImage(torch.from_numpy(np.ascontiguousarray(array)), path, "raster", np.eye(4), (1.0, 1.0),
                       {"mode": source_mode, "dtype": str(pixels.dtype)})


@contextlib.contextmanager
def _quiet_monai_logs():
    logger = logging.getLogger("monai")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_volume(path: Path, kind: str) -> LoadedImage:
    try:
        with warnings.catch_warnings(), _quiet_monai_logs():
            warnings.simplefilter("ignore")  # reader plug-in notices (nvImageCodec) are not the user's concern
            # The reader is given at call time so that LoadImage uses it alone: its own error (EOFError,
            # InvalidDicomError, ...) then reaches the message instead of a page of fallback-reader tracebacks.
            reader = NibabelReader() if kind == "nifti" else PydicomReader()
            loader = LoadImage(image_only=False, ensure_channel_first=True, dtype=np.float32)
            array, meta = loader(str(path), reader=reader)
    except Exception as error:  # the readers raise many types (EOFError, InvalidDicomError, ...)
        raise ValueError(f"{path}: cannot read {kind} image ({type(error).__name__}: {error})") from error
    affine = np.asarray(meta["affine"], dtype=np.float64)
    spatial = array.ndim - 1
    spacing = tuple(float(s) for s in np.sqrt((affine[:spatial, :spatial] ** 2).sum(axis=0)))
    tensor = torch.as_tensor(np.asarray(array), dtype=torch.float32).contiguous()
    return LoadedImage(tensor, path, kind, affine, spacing, dict(meta))

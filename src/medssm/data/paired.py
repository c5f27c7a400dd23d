"""Paired noisy/clean images for restoration (denoising): the Duke OCT set and folders like it.

Two layouts, both paired by a case key:

- "folders": ``root/<noisy>/<key><noisy_suffix>.<ext>`` with ``root/<clean>/<key><clean_suffix>.<ext>``, as
  :class:`~medssm.data.folders.ImageMaskFolder` pairs images and masks (extra clean files are ignored).
- "cases": one subfolder per case, ``root/<case>/<noisy>.<ext>`` and ``root/<case>/<clean>.<ext>``; the key is
  the folder name. Duke's Bioptigen OCT set is ``NN/noisy.png`` with ``NN/clean_average.png``
  (``clean="clean_average"``).

Raster files (PNG, TIF, ...; grey or colour) are scaled to [0, 1] by their stored depth (8-bit / 255, 16-bit
/ 65535), the same map for input and target, so PSNR with data_range 1 equals PSNR with peak 255 on 8-bit
files. NIfTI volumes are returned as read (choose an intensity preset, e.g. modality "ct", in the transforms).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .folders import files_by_key, strip_extension, to_unit_range
from .io import NIFTI_SUFFIXES, RASTER_SUFFIXES, load_image
from .splits import check_split, select_cases

IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES
LAYOUTS = ("folders", "cases")


class PairedImageFolder(Dataset):
    """Noisy inputs with clean targets of the same shape, one split of the cases.

    Items: "image" float32 (C, *spatial) the noisy input, "label" float32 (C, *spatial) the clean target,
    "name" the case key. Raster images are (C, H, W) in [0, 1] (C = 1 grey, 3 colour); NIfTI images are
    (C, *spatial) in MONAI's voxel order with their stored values.

    Args:
        root: the dataset folder.
        split: "train", "val" or "test": a seeded split of the cases (``val_fraction``, ``test_fraction``,
            ``seed``) or the lists in ``split_file`` (JSON {"train": [...], "val": [...], "test": [...]}).
        layout: "folders" (``root/<noisy>/<key>...`` and ``root/<clean>/<key>...``) or "cases"
            (``root/<case>/<noisy>.<ext>`` and ``root/<case>/<clean>.<ext>``).
        noisy, clean: folder names ("folders") or file names without extension ("cases").
        noisy_suffix, clean_suffix: removed from the file stems to form the case keys ("folders" only).
        fold, num_folds: with ``num_folds``, fold ``fold`` of a seeded k-fold partition is the test split and
            ``val_fraction`` of the other cases the val split (:func:`medssm.data.kfold_split`).
        transform: callable applied to the item dict (e.g. :func:`medssm.data.train_transforms`).

    ``spatial_dims`` and ``in_channels`` come from the first noisy file of the split; every case must match
    them, so that batches stack. ``num_classes`` equals ``in_channels`` (the number of output channels).
    """

    task = "restoration"

    def __init__(self, root: str | Path, split: str = "train", layout: str = "folders", noisy: str = "noisy",
                 clean: str = "clean", noisy_suffix: str = "", clean_suffix: str = "",
                 split_file: str | Path | None = None, val_fraction: float = 0.2, test_fraction: float = 0.0,
                 seed: int = 0, fold: int | None = None, num_folds: int | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.root, self.split, self.layout, self.transform = Path(root), check_split(split), layout, transform
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if layout == "folders":
            pairs = _pairs_from_folders(self.root, noisy, clean, noisy_suffix, clean_suffix)
        else:
            if noisy_suffix or clean_suffix:
                # Silently ignoring them would hide a misconfigured layout.
                raise ValueError("noisy_suffix and clean_suffix apply to layout 'folders' only; with layout "
                                 "'cases' give the file names (without extension) as noisy and clean")
            pairs = _pairs_from_cases(self.root, noisy, clean)
        self.cases = select_cases(list(pairs), split, self.root, split_file, val_fraction, test_fraction, seed,
                                  fold=fold, num_folds=num_folds)
        self.noisy_paths = {key: pairs[key][0] for key in self.cases}
        self.clean_paths = {key: pairs[key][1] for key in self.cases}
        first = read_unit_image(self.noisy_paths[self.cases[0]])
        self.spatial_dims = first.ndim - 1
        self.in_channels = int(first.shape[0])
        self.num_classes = self.in_channels  # restoration: the network outputs as many channels as it reads

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.cases[index]
        noisy_path, clean_path = self.noisy_paths[key], self.clean_paths[key]
        image = read_unit_image(noisy_path)
        if image.ndim - 1 != self.spatial_dims or image.shape[0] != self.in_channels:
            raise ValueError(f"{noisy_path}: shape {tuple(image.shape)} (C, *spatial), but the first noisy image of "
                             f"the {self.split} split has {self.in_channels} channel(s) and {self.spatial_dims} "
                             f"spatial dims; convert the folder to one colour mode and dimensionality")
        label = read_unit_image(clean_path)
        if label.shape != image.shape:
            raise ValueError(f"shape mismatch: noisy {noisy_path} is {tuple(image.shape)} (C, *spatial) but clean "
                             f"{clean_path} is {tuple(label.shape)}")
        item: dict[str, Any] = {"image": image, "label": label, "name": key}
        return self.transform(item) if self.transform is not None else item


def read_unit_image(path: str | Path) -> torch.Tensor:
    """One image file as float32 (C, *spatial): raster pixels scaled to [0, 1] by their stored depth (see
    :func:`~medssm.data.folders.to_unit_range`), NIfTI values as stored. Unreadable files raise ValueError
    naming the file."""
    loaded = load_image(path)
    # Only raster depths say what "full scale" is; a volume's values (HU, MR units) are kept for the transforms.
    array = to_unit_range(loaded) if loaded.kind == "raster" else loaded.array
    return array.float().contiguous()


def _image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` (raster or NIfTI), sorted, without hidden files."""
    return [path for path in sorted(folder.iterdir())
            if not path.name.startswith(".") and path.is_file() and strip_extension(path, IMAGE_SUFFIXES) is not None]


def _pairs_from_folders(root: Path, noisy: str, clean: str, noisy_suffix: str,
                        clean_suffix: str) -> dict[str, tuple[Path, Path]]:
    noisy_files = files_by_key(root / noisy, noisy_suffix, "noisy", IMAGE_SUFFIXES)
    clean_files = files_by_key(root / clean, clean_suffix, "clean", IMAGE_SUFFIXES)
    for key, path in sorted(noisy_files.items()):
        if key not in clean_files:
            raise FileNotFoundError(f"{path}: no clean image for case {key!r} in {root / clean} (looked for "
                                    f"'{key}{clean_suffix}.*')")
    return {key: (path, clean_files[key]) for key, path in noisy_files.items()}


def _pairs_from_cases(root: Path, noisy: str, clean: str) -> dict[str, tuple[Path, Path]]:
    folders = [path for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]
    if not folders:
        raise ValueError(f"{root}: no case folders (expected <case>/{noisy}.<ext> and <case>/{clean}.<ext>)")
    return {folder.name: (_case_file(folder, noisy, "noisy"), _case_file(folder, clean, "clean"))
            for folder in folders}


def _case_file(folder: Path, name: str, what: str) -> Path:
    """The one image file of a case folder called ``name`` plus an image extension."""
    files = _image_files(folder)
    matches = [path for path in files if strip_extension(path, IMAGE_SUFFIXES) == name]
    if not matches:
        found = [path.name for path in sorted(folder.iterdir()) if not path.name.startswith(".")]
        raise FileNotFoundError(f"{folder}: case folder has no {what} file '{name}.*' (found {found[:10]}); set "
                                f"{what}= to its file name without extension")
    if len(matches) > 1:
        raise ValueError(f"{folder}: more than one {what} file: {[path.name for path in matches]}")
    return matches[0]

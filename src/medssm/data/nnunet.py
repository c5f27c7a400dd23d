"""nnU-Net v2 raw dataset folders and Medical Segmentation Decathlon (MSD) folders.

The layout is read from ``dataset.json``:

- nnU-Net v2 (keys ``channel_names``, ``labels`` {name: int}, ``numTraining``, ``file_ending``): cases are
  the files of ``labelsTr/<case><file_ending>``; channel ``i`` of a case is ``imagesTr/<case>_{i:04d}``
  (a raster file may hold several channels, e.g. one RGB PNG for channels R, G, B).
- MSD / nnU-Net v1 (keys ``training`` [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
  ``modality``, ``labels`` {"0": "background", ...}): the listed image is a 3D or 4D (multi-channel)
  NIfTI; where it is absent but ``imagesTr/x_0000.nii.gz`` ... exist (nnU-Net v1's converted copy), those
  per-channel files are read instead.

Files are read with :func:`medssm.data.io.load_image` (MONAI's LoadImage). The "test" split is carved from
the training cases (``test_fraction``) or taken from ``split_file``: ``imagesTs`` has no labels, so it is
for prediction, not for this dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing
from torch.utils.data import Dataset

from .folders import to_unit_range
from .io import NIFTI_SUFFIXES, RASTER_SUFFIXES, LoadedImage, load_image, read_json
from .splits import check_split, select_cases

NNUNET_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
MSD_KEYS = ("training", "modality", "labels")


@dataclass
class CaseFiles:
    """The files of one case: ``images`` in channel order (one 4D file, or one file per channel) and its label."""

    images: list[Path]
    label: Path


class NnUNetDataset(Dataset):
    """One split of an nnU-Net v2 raw folder or an MSD task folder (layout detected from dataset.json).

    Items: "image" float32 (C, *spatial) as stored (CT in HU, MR raw; raster files scaled to [0, 1]),
    "label" int64 (1, *spatial), "affine" float64 (4, 4) voxel-to-world of the (resampled) image,
    "spacing" float64 (spatial_dims,), "name" the case id. Intensity normalisation and crops are the
    transforms' job (:func:`medssm.data.train_transforms` with ``modality=dataset.modality``).

    Args:
        root: the dataset folder holding dataset.json.
        split: "train", "val" or "test": a split of the training cases seeded by ``fold_seed`` with
            ``val_fraction`` / ``test_fraction``, or the lists in ``split_file`` (JSON {"train", "val",
            "test"}; nnU-Net's ``splits_final.json`` with ``fold``).
        fold, num_folds: with ``split_file``, ``fold`` picks a fold of nnU-Net's ``splits_final.json``;
            without it, ``num_folds`` makes fold ``fold`` of a seeded (``fold_seed``) k-fold partition the
            test split and ``val_fraction`` of the other cases the val split (:func:`medssm.data.kfold_split`).
        spacing: resample every case to this voxel spacing (one value per spatial axis, in the affine's
            units, mm for NIfTI) with MONAI's Spacing: bilinear for the image, nearest for the label. This
            is where resampling lives, because it needs the affine that the transforms never see.
        transform: callable applied to the item dict.
    """

    task = "segmentation"

    def __init__(self, root: str | Path, split: str = "train", fold_seed: int = 0, val_fraction: float = 0.2,
                 split_file: str | Path | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 spacing: Sequence[float] | None = None, test_fraction: float = 0.0, fold: int | None = None,
                 num_folds: int | None = None) -> None:
        self.root, self.split, self.transform = Path(root), check_split(split), transform
        self.meta = _read_dataset_json(self.root)
        # The layout is told by its distinctive keys; the others it needs must then be present too.
        if "channel_names" in self.meta or "file_ending" in self.meta:
            self.layout, required = "nnunet", NNUNET_KEYS
        elif "training" in self.meta or "modality" in self.meta:
            self.layout, required = "msd", MSD_KEYS
        else:
            raise ValueError(f"{self.root / 'dataset.json'}: neither an nnU-Net v2 dataset.json (keys "
                             f"{list(NNUNET_KEYS)}) nor an MSD one (keys {list(MSD_KEYS)}); found {sorted(self.meta)}")
        missing = [key for key in required if key not in self.meta]
        if missing:
            raise ValueError(f"{self.root / 'dataset.json'}: missing keys {missing} of an {self.layout} dataset.json "
                             f"(found {sorted(self.meta)})")
        if self.layout == "nnunet":
            files, self.channel_names, labels = self._nnunet_cases()
        else:
            files, self.channel_names, labels = self._msd_cases()
        self.label_names = labels
        self.num_classes = len(labels)
        self.in_channels = len(self.channel_names)
        if split_file is not None and num_folds is not None:  # two ways of choosing folds: say which is used
            raise ValueError(f"{self.root}: num_folds={num_folds} makes seeded k folds, but split_file {split_file} "
                             "lists its own; give fold alone to use a fold of the split file")
        self.cases = select_cases(list(files), split, self.root, split_file, val_fraction, test_fraction,
                                  fold_seed, fold, num_folds)
        self.files = {case: files[case] for case in self.cases}
        first = self.files[self.cases[0]]
        self.spatial_dims = _spatial_dims(first.label)
        self.modality = _modality(self.channel_names, first.label)
        if spacing is not None and len(spacing) != self.spatial_dims:
            raise ValueError(f"spacing {tuple(spacing)} needs one value per spatial axis ({self.spatial_dims})")
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        files = self.files[case]
        image, first = self._read_image(case, files)
        label = _read_label(case, files.label, set(range(self.num_classes)), self.label_names)
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"case {case!r}: label {files.label} has shape {tuple(label.shape[1:])} but the image "
                             f"{files.images[0]} has {tuple(image.shape[1:])}")
        affine = torch.as_tensor(first.affine, dtype=torch.float64)
        if self.spacing is not None:
            image, label, affine = _resample(image, label, affine, self.spacing)
        spacing = torch.sqrt((affine[: self.spatial_dims, : self.spatial_dims] ** 2).sum(dim=0))
        item: dict[str, Any] = {"image": image, "label": label, "affine": affine, "spacing": spacing, "name": case}
        return self.transform(item) if self.transform is not None else item

    # -- layouts ----------------------------------------------------------------------------------------------

    def _nnunet_cases(self) -> tuple[dict[str, CaseFiles], list[str], list[str]]:
        ending = str(self.meta["file_ending"])
        if not ending.lower().endswith(NIFTI_SUFFIXES + RASTER_SUFFIXES):
            raise ValueError(f"{self.root / 'dataset.json'}: file_ending {ending!r} is not supported; expected one "
                             f"of {list(NIFTI_SUFFIXES + RASTER_SUFFIXES)}")
        channel_names = _ordered_names(self.meta["channel_names"], "channel_names", self.root)
        labels = _nnunet_labels(self.meta["labels"], self.root)
        labels_dir, images_dir = self.root / "labelsTr", self.root / "imagesTr"
        if not labels_dir.is_dir():
            raise FileNotFoundError(f"label folder not found: {labels_dir}")
        label_files = sorted(p for p in labels_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
        if len(label_files) != int(self.meta["numTraining"]):
            raise ValueError(f"{self.root / 'dataset.json'}: numTraining is {self.meta['numTraining']} but "
                             f"{labels_dir} holds {len(label_files)} '*{ending}' files")
        files = {}
        for label in label_files:
            case = label.name[: -len(ending)]
            # A raster file may hold several channels; the channel files present are checked when read.
            candidates = [images_dir / f"{case}_{i:04d}{ending}" for i in range(len(channel_names))]
            if not candidates[0].is_file():
                raise FileNotFoundError(f"case {case!r}: channel file {candidates[0]} not found")
            files[case] = CaseFiles([p for p in candidates if p.is_file()] if _is_raster(ending) else candidates,
                                    label)
            if not _is_raster(ending):
                missing = [str(p) for p in candidates if not p.is_file()]
                if missing:
                    raise FileNotFoundError(f"case {case!r}: channel files not found: {missing}")
        return files, channel_names, labels

    def _msd_cases(self) -> tuple[dict[str, CaseFiles], list[str], list[str]]:
        channel_names = _ordered_names(self.meta["modality"], "modality", self.root)
        names = _ordered_names(self.meta["labels"], "labels", self.root)
        training = self.meta["training"]
        if not isinstance(training, list) or not training:
            raise ValueError(f"{self.root / 'dataset.json'}: 'training' must be a non-empty list of "
                             f'{{"image": ..., "label": ...}} entries')
        files = {}
        for entry in training:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise ValueError(f"{self.root / 'dataset.json'}: training entry {entry!r} needs 'image' and 'label'")
            image, label = self.root / entry["image"], self.root / entry["label"]
            case = _strip_ending(image.name)
            if not label.is_file():
                raise FileNotFoundError(f"case {case!r}: label file {label} not found")
            if image.is_file():
                files[case] = CaseFiles([image], label)
                continue
            # nnU-Net v1 keeps the MSD dataset.json but splits channels into <case>_0000.nii.gz, ...
            ending = image.name[len(case):]
            per_channel = [image.parent / f"{case}_{i:04d}{ending}" for i in range(len(channel_names))]
            if not all(p.is_file() for p in per_channel):
                raise FileNotFoundError(f"case {case!r}: image file {image} not found (nor per-channel files "
                                        f"{[p.name for p in per_channel]})")
            files[case] = CaseFiles(per_channel, label)
        return files, channel_names, names

    def _read_image(self, case: str, files: CaseFiles) -> tuple[torch.Tensor, LoadedImage]:
        loaded = [load_image(path) for path in files.images]
        shapes = {tuple(item.array.shape[1:]) for item in loaded}
        if len(shapes) != 1:
            found = [(p.name, tuple(x.array.shape[1:])) for p, x in zip(files.images, loaded, strict=True)]
            raise ValueError(f"case {case!r}: channel files have different shapes {found}")
        arrays = [to_unit_range(item) if item.kind == "raster" else item.array for item in loaded]
        image = torch.cat(arrays).float().contiguous()
        if image.shape[0] != self.in_channels:
            raise ValueError(f"case {case!r}: {[p.name for p in files.images]} hold {image.shape[0]} channels, "
                             f"but dataset.json names {self.in_channels} ({self.channel_names})")
        return image, loaded[0]


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json not found in {root} (an nnU-Net v2 or MSD dataset folder has one)")
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def _ordered_names(mapping: Any, key: str, root: Path) -> list[str]:
    """{"0": "CT", "1": "PET"} -> ["CT", "PET"]; the keys must be 0..n-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{root / 'dataset.json'}: {key!r} must be a non-empty object {{\"0\": name, ...}}")
    try:
        indexed = {int(k): str(v) for k, v in mapping.items()}
    except ValueError as error:
        raise ValueError(f"{root / 'dataset.json'}: {key!r} keys must be integers 0..n-1, got {list(mapping)}") \
            from error
    if sorted(indexed) != list(range(len(indexed))):
        raise ValueError(f"{root / 'dataset.json'}: {key!r} keys must be 0..{len(indexed) - 1}, got {sorted(indexed)}")
    return [indexed[i] for i in range(len(indexed))]


def _nnunet_labels(mapping: Any, root: Path) -> list[str]:
    """{"background": 0, "liver": 1} -> ["background", "liver"]; consecutive integers from 0 are required."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{root / 'dataset.json'}: 'labels' must be a non-empty object {{name: int}}")
    if "ignore" in mapping or any(not isinstance(v, int) for v in mapping.values()):
        raise ValueError(f"{root / 'dataset.json'}: region-based labels (lists) and 'ignore' labels are not "
                         f"supported; got {mapping}")
    by_value = {v: k for k, v in mapping.items()}
    if sorted(by_value) != list(range(len(mapping))):
        raise ValueError(f"{root / 'dataset.json'}: label values must be 0..{len(mapping) - 1}, got "
                         f"{sorted(mapping.values())}")
    return [by_value[i] for i in range(len(mapping))]


def _read_label(case: str, path: Path, allowed: set[int], names: list[str]) -> torch.Tensor:
    array = load_image(path).array
    if array.shape[0] != 1:
        raise ValueError(f"case {case!r}: label {path} has {array.shape[0]} channels; expected one")
    values = torch.unique(array)
    if not torch.equal(values, values.round()):
        raise ValueError(f"case {case!r}: label {path} holds non-integer values {values[:10].tolist()}")
    unknown = sorted(set(values.long().tolist()) - allowed)
    if unknown:
        raise ValueError(f"case {case!r}: label {path} holds values {unknown} not among the dataset.json labels "
                         f"{dict(enumerate(names))}")
    return array.round().long()


def _resample(image: torch.Tensor, label: torch.Tensor, affine: torch.Tensor,
              spacing: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image_out = Spacing(pixdim=spacing, mode="bilinear")(MetaTensor(image, affine=affine))
    label_out = Spacing(pixdim=spacing, mode="nearest")(MetaTensor(label.float(), affine=affine))
    new_affine = torch.as_tensor(np.asarray(image_out.affine), dtype=torch.float64)
    return (image_out.as_tensor().float().contiguous(), label_out.as_tensor().round().long().contiguous(),
            new_affine)


def _spatial_dims(label: Path) -> int:
    if _is_raster(label.name):
        return 2
    try:
        shape = nib.load(str(label)).shape  # header only; the voxels are read per item
    except Exception as error:  # nibabel raises ImageFileError, EOFError, OSError ...
        raise ValueError(f"{label}: cannot read NIfTI header ({type(error).__name__}: {error})") from error
    return min(len(shape), 3)  # a 4th axis (X, Y, Z, 1) is a channel for MONAI's reader


def _modality(channel_names: list[str], label: Path) -> str:
    """The intensity preset for :func:`medssm.data.train_transforms`: "ct" when every channel is CT (as
    nnU-Net decides its CT normalisation), "raster" for PNG/TIF data, "mr" (z-score) otherwise."""
    if _is_raster(label.name):
        return "raster"
    return "ct" if all(name.strip().lower() == "ct" for name in channel_names) else "mr"


def _is_raster(name: str) -> bool:
    return name.lower().endswith(RASTER_SUFFIXES)


def _strip_ending(name: str) -> str:
    for ending in (".nii.gz", *NIFTI_SUFFIXES, *RASTER_SUFFIXES):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem

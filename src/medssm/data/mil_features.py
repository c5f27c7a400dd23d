"""Bags of pre-extracted patch features: one file per slide and a labels CSV (CLAM's and TRIDENT's layout).

A slide ``S`` is ``<root>/S.h5`` (HDF5 read with h5py: datasets ``features`` (n, d) float and ``coords``
(n, 2), CLAM's ``extract_features_fp.py`` output) or ``<root>/S.safetensors`` (tensors ``features`` and
``coords``). The labels CSV has a ``slide_id`` column and a ``label`` column (CLAM's dataset CSVs); the label
names become class indices in sorted order (numerically when every name is an integer), or in the order of
``label_names`` when given.

Every slide of the split is checked when the dataset is built, from the files' headers: a slide without a
file, a file that cannot be read, a bag with no instance or without ``features``, and a bag whose feature
width differs from the others' each raise an error naming the file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .splits import check_split, select_cases

BAG_SUFFIXES = (".h5", ".safetensors")


def read_bag(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A feature bag file's ``features`` (n, d) float32 and ``coords`` (n, 2) (None when the file has none).
    ValueError names the file when it cannot be read or lacks ``features``."""
    path = Path(path)
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise ValueError(f"{path}: no 'features' dataset (found {sorted(f)})")
                features = torch.from_numpy(f["features"][()])
                coords = torch.from_numpy(f["coords"][()]) if "coords" in f else None
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "features" not in tensors:
                raise ValueError(f"{path}: no 'features' tensor (found {sorted(tensors)})")
            features, coords = tensors["features"], tensors.get("coords")
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001  (h5py and safetensors raise many types for a corrupt file)
        raise ValueError(f"{path}: cannot read the feature bag ({type(error).__name__}: {error})") from error
    return features.float(), coords


def bag_shape(path: Path) -> tuple[int, ...]:
    """The shape of a bag file's ``features`` from its header, without reading the values."""
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise ValueError(f"{path}: no 'features' dataset (found {sorted(f)})")
                return tuple(f["features"].shape)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if "features" not in f.keys():
                raise ValueError(f"{path}: no 'features' tensor (found {sorted(f.keys())})")
            return tuple(f.get_slice("features").get_shape())
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read the feature bag ({type(error).__name__}: {error})") from error


def read_labels(path: str | Path, slide_column: str = "slide_id",
                label_column: str = "label") -> dict[str, str]:
    """``{slide id: label name}`` from a CSV; errors name the file and the missing column or duplicate slide."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for column in (slide_column, label_column):
            if column not in columns:
                raise ValueError(f"{path}: no {column!r} column (columns: {columns})")
        labels: dict[str, str] = {}
        for row in reader:
            slide = row[slide_column].strip()
            if slide in labels:
                raise ValueError(f"{path}: slide {slide!r} is listed twice")
            labels[slide] = row[label_column].strip()
    if not labels:
        raise ValueError(f"{path}: no slides listed")
    return labels


def class_names(labels: list[str], label_names: list[str] | None) -> list[str]:
    """The classes in index order: ``label_names`` (every label must be among them), else the sorted label
    names (numerically when all are integers)."""
    if label_names is not None:
        unknown = sorted(set(labels) - set(map(str, label_names)))
        if unknown:
            raise ValueError(f"labels {unknown} are not among label_names {label_names}")
        return [str(n) for n in label_names]
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


class FeatureBags(Dataset):
    """Slides as bags of feature vectors (see the module docstring).

    Items: "image" float32 (n, d), "label" int64 scalar, "coords" (n, 2) as stored (zeros when the file has
    none), "name" the slide id. ``task`` "mil", ``in_channels`` d, ``num_classes`` the number of label names,
    ``class_names``, ``spatial_dims`` None, ``instance_shape`` (d,).

    Args:
        root: the folder of ``<slide>.h5`` / ``<slide>.safetensors`` files.
        labels: the labels CSV. split, fold, num_folds, val_fraction, test_fraction, seed, split_file: as
            :class:`~medssm.data.mil_colon.ColonMIL` (the CSV's slides are the cases).
        label_names: class names in index order (default: sorted). slide_column, label_column: CSV columns.
        transform: applied to the item dict.
    """

    task = "mil"
    spatial_dims = None

    def __init__(self, root: str | Path, labels: str | Path, split: str = "train", fold: int | None = None,
                 num_folds: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0,
                 seed: int = 0, split_file: str | Path | None = None, label_names: list[str] | None = None,
                 slide_column: str = "slide_id", label_column: str = "label", transform: Any = None) -> None:
        self.root, self.split, self.transform = Path(root), check_split(split), transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"feature folder not found: {self.root}")
        listed = read_labels(labels, slide_column, label_column)
        self.class_names = class_names(list(listed.values()), label_names)
        self.num_classes = len(self.class_names)
        self.cases = select_cases(list(listed), split, self.root, split_file, val_fraction, test_fraction, seed,
                                  fold=fold, num_folds=num_folds)
        self.paths = [self._find(slide, labels) for slide in self.cases]
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = torch.tensor([index[listed[slide]] for slide in self.cases])
        self.in_channels = self._check_shapes()
        self.instance_shape = (self.in_channels,)

    def _find(self, slide: str, labels: str | Path) -> Path:
        found = [path for path in (self.root / f"{slide}{suffix}" for suffix in BAG_SUFFIXES) if path.is_file()]
        if not found:
            raise FileNotFoundError(f"slide {slide!r} of {labels} has no feature file {slide}.h5 or "
                                    f"{slide}.safetensors in {self.root}")
        if len(found) > 1:
            raise ValueError(f"slide {slide!r} has two feature files: {found[0].name} and {found[1].name}")
        return found[0]

    def _check_shapes(self) -> int:
        """Every bag is (n >= 1, d) with the same d (the first file's); returns d."""
        width, first = None, None
        for path in self.paths:
            shape = bag_shape(path)
            if len(shape) != 2:
                raise ValueError(f"{path}: features must be (n, d), got shape {shape}")
            if shape[0] == 0:
                raise ValueError(f"{path}: an empty bag (features of shape {shape})")
            if width is None:
                width, first = shape[1], path
            elif shape[1] != width:
                raise ValueError(f"{path}: features are {shape[1]} wide, but {first} has {width}; every bag "
                                 "must come from the same feature extractor")
        return int(width)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        features, coords = read_bag(path)
        if features.dim() != 2 or features.shape[1] != self.in_channels or features.shape[0] == 0:
            raise ValueError(f"{path}: features of shape {tuple(features.shape)}, expected (n >= 1, "
                             f"{self.in_channels})")
        if coords is None:
            coords = torch.zeros(features.shape[0], 2, dtype=torch.int64)
        elif tuple(coords.shape) != (features.shape[0], 2):
            raise ValueError(f"{path}: coords of shape {tuple(coords.shape)}, expected ({features.shape[0]}, 2)")
        item = {"image": features.contiguous(), "label": self.labels[index].clone(), "coords": coords,
                "name": self.cases[index]}
        return self.transform(item) if self.transform is not None else item

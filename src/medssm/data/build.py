"""Build a dataset by name from keyword arguments (what a training config holds)."""

from __future__ import annotations

import inspect
from typing import Any

from torch.utils.data import Dataset

from .ehr import PhysioNet2012
from .folders import ImageMaskFolder
from .medmnist import MedMNIST
from .mil_colon import ColonMIL
from .mil_features import FeatureBags
from .nnunet import NnUNetDataset
from .paired import PairedImageFolder
from .slices import SliceStack
from .synthetic import SyntheticSegmentation
from .ucr import UCRDataset
from .wfdb import WFDBBeats

DATASETS: dict[str, type[Dataset]] = {
    "medmnist": MedMNIST,
    "folder": ImageMaskFolder,
    "nnunet": NnUNetDataset,
    "paired": PairedImageFolder,
    "slices": SliceStack,
    "wfdb": WFDBBeats,
    "ucr": UCRDataset,
    "synthetic": SyntheticSegmentation,
    "colon_mil": ColonMIL,
    "feature_bags": FeatureBags,
    "physionet2012": PhysioNet2012,
}


def build_dataset(name: str, /, split: str = "train", **kwargs: Any) -> Dataset:
    """``DATASETS[name](split=split, **kwargs)`` (``name`` is positional-only: UCRDataset takes ``name`` too),
    with ValueError for an unknown name (listing the valid ones)
    and TypeError naming unknown or missing keyword arguments and the accepted ones.

    Example: ``build_dataset("folder", "val", root="drive/training", masks="1st_manual", fov="mask",
    image_suffix="_training", mask_suffix="_manual1", fov_suffix="_training_mask")``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    cls = DATASETS[name]
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if {"fold", "num_folds"} & set(unknown):
        raise ValueError(f"dataset {name!r} ({cls.__name__}) keeps its official train/val/test splits and takes no "
                         f"fold/num_folds; the datasets that can be cross-validated: {foldable_datasets()}")
    if unknown:
        raise TypeError(f"dataset {name!r} ({cls.__name__}) got unexpected keyword arguments {unknown}; "
                        f"it accepts {accepted}")
    missing = [p.name for p in signature.parameters.values()
               if p.name not in ("self", "split") and p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs]
    if missing:
        raise TypeError(f"dataset {name!r} ({cls.__name__}) needs keyword arguments {missing}")
    return cls(split=split, **kwargs)


def foldable_datasets() -> list[str]:
    """The dataset names that take ``fold`` and ``num_folds`` (cross-validation folds of their cases)."""
    return sorted(name for name, cls in DATASETS.items()
                  if {"fold", "num_folds"} <= set(inspect.signature(cls.__init__).parameters))

"""Datasets and transform presets for medical files.

Every dataset is a torch ``Dataset`` of item dicts: "image" float32 (C, *spatial) (events: packed tokens
(L, 4), see :mod:`medssm.data.ehr`); "label" int64 (1, *spatial) for segmentation, int64 scalar for
classification and events, float32 (K,) for multi-label, float32 (C, *spatial) for restoration; optional "fov"
uint8 (1, *spatial) and "name" str (plus "affine" and "spacing" from NIfTI folders). Each has ``task``,
``spatial_dims``, ``in_channels``, ``num_classes`` and takes ``split`` ("train" | "val" | "test") and
``transform`` (applied to the item dict).
"""

from .build import DATASETS, build_dataset
from .ehr import EventTokenizer, PhysioNet2012
from .folders import ImageMaskFolder, read_fov, read_mask, to_unit_range
from .io import LoadedImage, image_kind, load_image, read_raster
from .medmnist import MedMNIST
from .nnunet import NnUNetDataset
from .paired import PairedImageFolder
from .splits import SPLITS, kfold_split, load_split_file, seeded_split, select_cases
from .synthetic import SyntheticSegmentation
from .transforms import eval_transforms, train_transforms
from .ucr import UCRDataset, read_ucr_file
from .wfdb import AAMI_CLASSES, WFDBBeats

__all__ = [
    "AAMI_CLASSES",
    "DATASETS",
    "EventTokenizer",
    "SPLITS",
    "ImageMaskFolder",
    "LoadedImage",
    "MedMNIST",
    "NnUNetDataset",
    "PairedImageFolder",
    "PhysioNet2012",
    "SyntheticSegmentation",
    "UCRDataset",
    "WFDBBeats",
    "build_dataset",
    "eval_transforms",
    "image_kind",
    "load_image",
    "load_split_file",
    "read_fov",
    "read_mask",
    "read_raster",
    "read_ucr_file",
    "seeded_split",
    "select_cases",
    "kfold_split",
    "to_unit_range",
    "train_transforms",
]

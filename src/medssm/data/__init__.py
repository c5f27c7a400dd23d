"""Datasets and transform presets for medical files.

Every dataset is a torch ``Dataset`` of item dicts: "image" float32 (C, *spatial); "label" int64
(1, *spatial) for segmentation, int64 scalar for classification, float32 (K,) for multi-label, float32
(C, *spatial) for restoration; for "mil" bags (mil_colon.py, mil_features.py) "image" is (n, *instance), "label" an
int64 scalar and "coords" (n, 2); for "events" "image" is packed tokens (L, 4) (see :mod:`medssm.data.ehr`) and
"label" an int64 scalar; optional "fov" uint8 (1, *spatial) and "name" str (plus "affine" and "spacing"
from NIfTI folders). Each has ``task``, ``spatial_dims``, ``in_channels``, ``num_classes`` and takes
``split`` ("train" | "val" | "test") and ``transform`` (applied to the item dict).
"""

from .build import DATASETS, build_dataset
from .ehr import EventTokenizer, PhysioNet2012
from .folders import ImageMaskFolder, read_fov, read_mask, to_unit_range
from .io import LoadedImage, image_kind, load_image, read_raster
from .medmnist import MedMNIST
from .mil_colon import BagAugment, ColonMIL
from .mil_features import FeatureBags, read_bag
from .nnunet import NnUNetDataset
from .paired import PairedImageFolder
from .splits import SPLITS, kfold_split, load_split_file, seeded_split, select_cases
from .synthetic import SyntheticSegmentation
from .transforms import eval_transforms, train_transforms
from .ucr import UCRDataset, read_ucr_file
from .wfdb import AAMI_CLASSES, WFDBBeats

__all__ = [
    "AAMI_CLASSES",
    "BagAugment",
    "ColonMIL",
    "FeatureBags",
    "read_bag",
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

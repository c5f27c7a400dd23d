"""Bags of patches around annotated nuclei: the colon cancer MIL set of Ilse et al. (2018) and folders like it.

The data are Sirinukunwattana et al.'s CRCHistoPhenotypes (IEEE TMI 35(5), 2016): 100 H&E images of 500x500
pixels, ``imgN/imgN.png`` with ``imgN/imgN_<class>.mat`` for class in epithelial, fibroblast, inflammatory,
others (22,444 classified nuclei) and detection (all 29,756 detected nuclei). Each .mat holds ``detection``, an
(n, 2) array of nucleus centres (x, y) in pixels in MATLAB's 1-based convention: pixel (row r, column c),
0-based, has its centre at (x, y) = (c + 1, r + 1).

Ilse, Tomczak & Welling 2018 ("Attention-based Deep Multiple Instance Learning", arXiv:1802.04712): a bag is
the set of 27x27 patches centred on an image's nuclei, positive when the image holds an epithelial nucleus
(51 of 100 bags), evaluated by 10-fold cross-validation; training augments every patch with random flips,
90-degree rotations and a random change of the amount of haematoxylin and eosin (:class:`BagAugment`).

Patch rule (stated here because the paper does not): a centre (x, y) becomes the 0-based pixel
(row, column) = (round(y - 1), round(x - 1)) clipped into the image, and the patch is the p x p window centred
on it in the image mirror-padded by p // 2 pixels (numpy's "reflect"), so every patch has the full size.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset

from .io import read_raster
from .splits import check_split, select_cases

NUCLEUS_CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")
NUCLEI = ("classified", "detection")  # which centres make the bag: the four class files, or detection.mat

# Ruifrok & Johnston 2001 stain vectors (rows: haematoxylin, eosin, DAB optical densities in R, G, B), the
# matrix scikit-image's rgb2hed inverts.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def read_centres(path: str | Path) -> np.ndarray:
    """The nucleus centres of one .mat file as 0-based (x, y) float64 (n, 2) (MATLAB's 1-based centres minus
    one); an empty file gives (0, 2). ValueError names the file when it cannot be read or has no (n, 2)
    ``detection`` array."""
    path = Path(path)
    try:
        content = scipy.io.loadmat(path)
    except Exception as error:  # noqa: BLE001  (scipy raises MatReadError, NotImplementedError (v7.3), ...)
        raise ValueError(f"{path}: cannot read the MATLAB file ({type(error).__name__}: {error})") from error
    if "detection" not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path}: no 'detection' array of (x, y) centres (keys: {keys})")
    centres = np.asarray(content["detection"], dtype=np.float64)
    if centres.size == 0:
        return np.zeros((0, 2))
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"{path}: 'detection' must be (n, 2) (x, y) centres, got shape {centres.shape}")
    return centres - 1.0


def centre_pixels(centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """0-based (x, y) centres -> the int64 (column, row) pixels that hold them, clipped into the image."""
    pixels = np.rint(centres).astype(np.int64)
    return np.stack([pixels[:, 0].clip(0, width - 1), pixels[:, 1].clip(0, height - 1)], axis=1)


def extract_patches(image: np.ndarray, pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """(n, C, p, p) patches of an (H, W, C) image centred on the (column, row) ``pixels`` (n, 2), the image
    mirror-padded by p // 2 (the module's patch rule); p must be odd so that a patch has a centre pixel."""
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd number (a patch centred on its nucleus), got "
                         f"{patch_size}")
    r = patch_size // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect" if min(image.shape[:2]) > r else "edge")
    offsets = np.arange(patch_size)
    rows = pixels[:, 1, None] + offsets  # padded row of patch row j = row - r + j + r
    cols = pixels[:, 0, None] + offsets
    patches = padded[rows[:, :, None], cols[:, None, :]]  # (n, p, p, C)
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2))


def find_mat(folder: Path, stem: str, kind: str) -> Path:
    path = folder / f"{stem}_{kind}.mat"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected {stem}_<class>.mat files next to {stem}.png)")
    return path


def read_case(image_path: str | Path, nuclei: str = "classified") -> tuple[np.ndarray, np.ndarray, int]:
    """One annotated image: its RGB pixels (H, W, 3) uint8, the 0-based (x, y) centres of its bag's nuclei
    (n, 2) float64 (classified: the four class files; detection: detection.mat) in raster order (by y, then x)
    and its bag label (1 when it holds an epithelial nucleus). The .mat files are found next to the image as
    ``<stem>_<class>.mat``.

    Raster order, not the files' class order: a sequence model (mamba_mil, transmil's position encoding)
    would otherwise read the nucleus classes, which only the annotation knows, from the instance order."""
    if nuclei not in NUCLEI:
        raise ValueError(f"nuclei must be one of {NUCLEI}, got {nuclei!r}")
    image_path = Path(image_path)
    folder, stem = image_path.parent, image_path.stem
    image = read_raster(image_path, "RGB")
    epithelial = read_centres(find_mat(folder, stem, "epithelial"))
    kinds = NUCLEUS_CLASSES if nuclei == "classified" else ("detection",)
    centres = np.concatenate([epithelial if k == "epithelial" else read_centres(find_mat(folder, stem, k))
                              for k in kinds])
    if len(centres) == 0:
        raise ValueError(f"{image_path}: an empty bag (no {nuclei} nucleus in its .mat files)")
    return image, centres[np.lexsort((centres[:, 0], centres[:, 1]))], int(len(epithelial) > 0)


class ColonMIL(Dataset):
    """Bags of patches around nuclei (Ilse et al. 2018's colon cancer set, see the module docstring).

    Items: "image" float32 (n, 3, p, p) in [0, 1], "label" int64 scalar (1: the image holds an epithelial
    nucleus), "coords" int64 (n, 2) the (x, y) = (column, row) 0-based pixel of each patch centre, "name" the
    case folder (e.g. "img12"). ``task`` "mil", ``num_classes`` 2, ``in_channels`` 3, ``spatial_dims`` None
    (a bag has no grid), ``instance_shape`` (3, p, p).

    Args:
        root: the folder of case folders ``imgN/imgN.png`` (+ .mat files).
        split: "train", "val" or "test": fold ``fold`` of ``num_folds`` is the test split and ``val_fraction``
            of the rest is val (Ilse's 10-fold protocol), or without num_folds a seeded split
            (``val_fraction``, ``test_fraction``), or ``split_file``.
        patch_size: p (27). nuclei: "classified" (Ilse's 22,444 nuclei) or "detection" (all 29,756).
        color_sigma: the standard deviation of the training colour augmentation (see :class:`BagAugment`).
        transform: applied to the item dict.
    """

    task = "mil"
    spatial_dims = None
    in_channels = 3
    num_classes = 2

    def __init__(self, root: str | Path, split: str = "train", fold: int | None = None,
                 num_folds: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
                 split_file: str | Path | None = None, patch_size: int = 27, nuclei: str = "classified",
                 color_sigma: float = 0.05, transform: Any = None) -> None:
        self.root, self.split, self.transform = Path(root), check_split(split), transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if nuclei not in NUCLEI:
            raise ValueError(f"nuclei must be one of {NUCLEI}, got {nuclei!r}")
        if color_sigma < 0:
            raise ValueError(f"color_sigma must be >= 0, got {color_sigma}")
        self.patch_size, self.nuclei, self.color_sigma = patch_size, nuclei, color_sigma
        self.instance_shape = (3, patch_size, patch_size)
        cases = {p.name: p / f"{p.name}.png" for p in sorted(self.root.iterdir())
                 if p.is_dir() and (p / f"{p.name}.png").is_file()}
        if not cases:
            raise ValueError(f"{self.root}: no case folders <name>/<name>.png")
        self.cases = select_cases(list(cases), split, self.root, split_file, val_fraction, test_fraction, seed,
                                  fold=fold, num_folds=num_folds)
        self.paths = [cases[name] for name in self.cases]
        self.labels = torch.tensor([int(len(read_centres(find_mat(p.parent, p.stem, "epithelial"))) > 0)
                                    for p in self.paths])
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 patches (n, 3, p, p) and (column, row) centres (n, 2) of case ``index`` (cached)."""
        if index not in self._cache:
            image, centres, _ = read_case(self.paths[index], self.nuclei)
            pixels = centre_pixels(centres, *image.shape[:2])
            self._cache[index] = (extract_patches(image, pixels, self.patch_size), pixels)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        patches, pixels = self.load(index)
        item = {"image": torch.from_numpy(patches).float() / 255.0, "label": self.labels[index].clone(),
                "coords": torch.from_numpy(pixels), "name": self.cases[index]}
        return self.transform(item) if self.transform is not None else item


class BagAugment:
    """Ilse et al.'s training augmentation of a bag of RGB patches (n, 3, p, p) in [0, 1], drawn per patch:
    a random element of the eight flips and 90-degree rotations of the square (with ``flips`` /
    ``rotations``), and, with ``color_sigma`` > 0, the haematoxylin and eosin amounts each multiplied by an
    independent N(1, color_sigma^2) factor in Ruifrok & Johnston's colour deconvolution (optical density
    -> H, E, DAB; scale H and E; back to RGB, clipped to [0, 1]). Ilse et al. give no sigma; 0.05 by default.

    ``set_random_state(seed)`` makes it repeatable (the trainer seeds it per sample and epoch).
    """

    def __init__(self, flips: bool = True, rotations: bool = True, color_sigma: float = 0.05) -> None:
        self.flips, self.rotations, self.color_sigma = flips, rotations, color_sigma
        self.rng = np.random.default_rng()

    def set_random_state(self, seed: int | None = None, state: Any = None) -> BagAugment:
        self.rng = np.random.default_rng(seed)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        patches = item["image"]
        n = patches.shape[0]
        if self.color_sigma > 0:
            factors = torch.from_numpy(self.rng.normal(1.0, self.color_sigma, (n, 2))).float()
            patches = hed_scale(patches, factors)
        flip = torch.from_numpy(self.rng.integers(0, 2, n) if self.flips else np.zeros(n, np.int64))
        turns = torch.from_numpy(self.rng.integers(0, 4, n) if self.rotations else np.zeros(n, np.int64))
        out = patches.clone()
        for f in (0, 1):
            for k in range(4):
                chosen = ((flip == f) & (turns == k)).nonzero()[:, 0]
                if len(chosen) and (f or k):
                    group = patches[chosen].flip(-1) if f else patches[chosen]
                    out[chosen] = torch.rot90(group, k, dims=(-2, -1))
        item["image"] = out.contiguous()
        return item


def hed_scale(patches: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """RGB patches (n, 3, p, p) in [0, 1] with their haematoxylin and eosin optical densities multiplied by
    ``factors`` (n, 2) (Ruifrok & Johnston's deconvolution, scikit-image's stain matrix)."""
    matrix = torch.as_tensor(RGB_FROM_HED, dtype=torch.float32)
    od = -torch.log(patches.clamp_min(1e-6)).movedim(1, -1)  # (n, p, p, 3)
    stains = od @ torch.linalg.inv(matrix)
    scale = torch.cat([factors, torch.ones(len(factors), 1)], dim=1)[:, None, None, :]
    rgb = torch.exp(-(stains * scale) @ matrix)
    return rgb.clamp(0.0, 1.0).movedim(-1, 1).contiguous()


def bag_transforms(dataset: Any, train: bool, flips: bool | None = None, rotations: bool | None = None) -> Any:
    """The transform of a "mil" split: :class:`BagAugment` for training on patch bags (flips and rotations on
    unless set False, the dataset's ``color_sigma``), None for evaluation and for feature bags."""
    if not train or len(getattr(dataset, "instance_shape", ())) != 3:
        return None
    return BagAugment(flips is not False, rotations is not False, getattr(dataset, "color_sigma", 0.0))

"""``medssm predict`` for a "mil" checkpoint: a bag's probability and its instances' scores.

Inputs (a file, or a folder of them):

- a feature bag ``S.h5`` / ``S.safetensors`` (CLAM's layout, see :mod:`medssm.data.mil_features`), for a model
  trained on feature bags;
- an image ``S.png`` (any raster) with its nucleus centres next to it, for a model trained on patch bags:
  ``S_<class>.mat`` files as in the colon set (:mod:`medssm.data.mil_colon`), or ``S_coords.csv`` with columns
  x, y (0-based pixel centres); the patches are cut as in training (the checkpoint's patch size and nuclei);
- a case folder ``S/`` holding ``S.png``, the colon set's layout.

Outputs under the output folder: ``predictions.csv`` (bag, predicted class, prob_0..prob_{K-1}), per bag
``S_instances.csv`` (index, x, y, score: the model's instance scores, e.g. attention weights) and, for images,
``S_heatmap.png``: the image beside the scores painted over it (each patch's square coloured by score / max).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import RASTER_SUFFIXES, read_raster
from ..data.mil_colon import centre_pixels, extract_patches, read_case
from ..data.mil_features import BAG_SUFFIXES, read_bag
from .files import atomic_path, write_text_atomic
from .inference import infer_bag
from .outputs import CSV_NAME, check_plan, csv_text

logger = logging.getLogger(__name__)


def find_bags(input: Path) -> list[Path]:
    """The bags under ``input``: a bag file or an image, a case folder ``S/S.png``, or a folder of those."""
    if not input.exists():
        raise FileNotFoundError(f"{input}: no such file or folder")
    if input.is_file():
        if not _is_bag_or_image(input):
            raise ValueError(f"{input}: not a feature bag ({', '.join(BAG_SUFFIXES)}) nor an image")
        return [input]
    own = input / f"{input.name}.png"
    if own.is_file():
        return [own]
    bags = []
    for child in sorted(input.iterdir()):
        if child.is_dir() and (child / f"{child.name}.png").is_file():
            bags.append(child / f"{child.name}.png")
        elif child.is_file() and not child.name.startswith(".") and _is_bag_or_image(child):
            bags.append(child)
    if not bags:
        raise ValueError(f"{input}: no bags to predict (expected .h5/.safetensors feature bags, images with their "
                         "nucleus annotations, or case folders S/S.png)")
    return bags


def _is_bag_or_image(path: Path) -> bool:
    return path.suffix.lower() in BAG_SUFFIXES + RASTER_SUFFIXES


def read_coords_csv(path: Path) -> np.ndarray:
    """0-based (x, y) centres (n, 2) from a CSV with columns x and y."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"x", "y"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: needs columns x and y (0-based pixel centres), got {reader.fieldnames}")
        rows = [(float(r["x"]), float(r["y"])) for r in reader]
    if not rows:
        raise ValueError(f"{path}: an empty bag (no rows)")
    return np.array(rows)


def load_bag(path: Path, model_args: dict[str, Any], data_args: dict[str, Any]
             ) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """A bag (n, ...) for the model, its (x, y) instance coordinates (n, 2) and, for an image, its pixels."""
    in_channels = model_args["in_channels"]
    patches = model_args.get("encoder") is not None
    if path.suffix.lower() in BAG_SUFFIXES:
        if patches:
            raise ValueError(f"{path}: a feature bag, but the model was trained on patches (encoder "
                             f"{model_args['encoder']!r}); give it an image with its nucleus annotations")
        features, coords = read_bag(path)
        if features.dim() != 2 or features.shape[1] != in_channels or len(features) == 0:
            raise ValueError(f"{path}: features of shape {tuple(features.shape)}, but the model takes "
                             f"(n >= 1, {in_channels})")
        coords = np.zeros((len(features), 2)) if coords is None else coords.numpy()
        return features, coords, None
    if not patches:
        raise ValueError(f"{path}: an image, but the model was trained on feature bags of width {in_channels}")
    listed = path.with_name(f"{path.stem}_coords.csv")
    if listed.is_file():
        image, centres = read_raster(path, "RGB"), read_coords_csv(listed)
    else:
        image, centres, _ = read_case(path, data_args.get("nuclei", "classified"))
    pixels = centre_pixels(centres, *image.shape[:2])
    bag = torch.from_numpy(extract_patches(image, pixels, data_args.get("patch_size", 27))).float() / 255.0
    return bag, pixels, image


def plot_heatmap(image: np.ndarray, pixels: np.ndarray, scores: np.ndarray, patch_size: int, path: Path,
                 title: str) -> None:
    """The image beside the instance scores painted over it: each patch's square coloured by score / max
    (higher scores drawn last, so they win where patches overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    relative = scores / scores.max() if scores.max() > 0 else scores
    heat = np.full(image.shape[:2], np.nan)
    r = patch_size // 2
    for i in np.argsort(relative):
        x, y = pixels[i]
        heat[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = relative[i]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=9)
    axes[1].imshow(image)
    shown = axes[1].imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[1].set_title("instance score / max", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def instances_csv(pixels: np.ndarray, scores: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "x", "y", "score"])
    for i, ((x, y), score) in enumerate(zip(pixels.tolist(), scores.tolist(), strict=True)):
        writer.writerow([i, f"{x:g}", f"{y:g}", f"{score:.6g}"])
    return buffer.getvalue()


def predict_bags(model: torch.nn.Module, meta: dict[str, Any], input: str | Path, output: str | Path,
                 overwrite: bool = False, device: torch.device | str = "cpu") -> list[Path]:
    """Predict every bag under ``input`` with a loaded "mil" model and write the files of the module docstring
    under the folder ``output``; returns the written paths. Existing outputs are refused unless ``overwrite``."""
    input, output = Path(input), Path(output)
    if output.is_file():
        raise ValueError(f"{output}: a mil prediction writes a folder, but this is a file")
    bags = find_bags(input)
    plan = [(bag, [output / f"{_name(bag)}_instances.csv"]
             + ([output / f"{_name(bag)}_heatmap.png"] if bag.suffix.lower() in RASTER_SUFFIXES else []))
            for bag in bags]
    check_plan(plan + [(input, [output / CSV_NAME])], overwrite)
    data_args = meta["config"]["data"]["args"]
    rows, written = [], []
    for bag_path, paths in plan:
        bag, pixels, image = load_bag(bag_path, meta["model_args"], data_args)
        prob, scores = infer_bag(model, bag[None].to(device), instance_scores=True)
        prob, scores = prob[0].float().cpu().numpy(), scores[0].float().cpu().numpy()
        rows.append((_name(bag_path), prob))
        write_text_atomic(paths[0], instances_csv(pixels, scores))
        if image is not None:
            title = f"{_name(bag_path)}: class {int(prob.argmax())} (p = {prob.max():.3f}), {len(scores)} instances"
            plot_heatmap(image, pixels, scores, data_args.get("patch_size", 27), paths[1], title)
        written += paths
        logger.info("%s: class %d (p=%.3f)", bag_path, int(prob.argmax()), float(prob.max()))
    write_text_atomic(output / CSV_NAME, csv_text(rows))
    return written + [output / CSV_NAME]


def _name(bag: Path) -> str:
    return bag.stem

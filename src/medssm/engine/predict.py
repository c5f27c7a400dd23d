"""Prediction over image files and folders, written back in the input's format and geometry.

``predict_path(input, output, predict_fn)`` runs a caller-supplied ``predict_fn`` (the model with its sliding
window and test-time augmentation already wrapped in) on every case under ``input`` and writes:

============================  ==============================  =======================================
input case                    segmentation mask               ``probabilities=True`` adds
============================  ==============================  =======================================
``x.nii`` / ``x.nii.gz``      ``x.nii`` / ``x.nii.gz``         ``x_prob.nii.gz`` (classes on dim 4)
DICOM series folder ``ct1/``  ``ct1.nii.gz``                  ``ct1_prob.nii.gz``
DICOM file ``a.dcm``          ``a.nii.gz`` (one-slice 3D)     ``a_prob.nii.gz``
``img.png`` / .jpg/.tif/...   ``img.png`` (always PNG)        ``img_prob.npz`` (key "probabilities")
============================  ==============================  =======================================

NIfTI masks keep the input's affine and header (qform/sform codes, pixdim, units); masks from DICOM get the
series' RAS affine with qform/sform code 1 (scanner). Raster masks are lossless PNG of the input's height and
width: 0/255 for a binary task, class indices otherwise. Classification writes one ``predictions.csv``;
restoration writes the restored image (NIfTI float32, or the raster's own dtype).

Every file goes through :func:`medssm.engine.files.atomic_path`: a case that fails leaves nothing behind,
cases finished before it stay, and existing outputs are refused before any work unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medssm.data.io import LoadedImage
from medssm.data.transforms import eval_transforms
from medssm.engine.cases import Case, find_cases, is_dicom_series, list_cases, load_case
from medssm.engine.config import config_from_dict
from medssm.engine.ensemble import CheckpointPaths, EnsemblePredictor
from medssm.engine.files import write_text_atomic
from medssm.engine.outputs import (
    CSV_NAME,
    FAILED_NAME,
    check_plan,
    csv_text,
    looks_like_file,
    plan_outputs,
    raster_scale,
    read_csv_rows,
    write_case,
)
from medssm.engine.setup import pick_device
from medssm.engine.setup import roi_size as config_roi_size
from medssm.engine.tasks import check_supported

__all__ = ["PREDICT_TASKS", "default_preprocess", "is_dicom_series", "list_cases", "predict_checkpoint",
           "predict_path"]

logger = logging.getLogger(__name__)

# What prediction writes files for (multilabel writes classification's CSV).
PREDICT_TASKS = ("segmentation", "classification", "restoration")

PredictFn = Callable[[torch.Tensor], torch.Tensor]
Preprocess = Callable[[LoadedImage], torch.Tensor]


def default_preprocess(loaded: LoadedImage) -> torch.Tensor:
    """The image the model sees, (C, *spatial) float32: raster /255 (8-bit) or /65535 (16-bit); volumes as read.

    Restoration writes raster results back with the same factor, so a custom ``preprocess`` for a restoration
    model should keep raster intensities in [0, 1] of the file's integer range.
    """
    return loaded.array / raster_scale(loaded) if loaded.kind == "raster" else loaded.array


def _run(predict_fn: PredictFn, image: torch.Tensor, loaded: LoadedImage, task: str) -> np.ndarray:
    """predict_fn on (1, C, *spatial); returns its single result as float32 NumPy, (K,) or (K, *spatial)."""
    if not isinstance(image, torch.Tensor) or image.ndim != loaded.array.ndim:
        raise ValueError(f"preprocess must return a (C, *spatial) tensor, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    spatial = tuple(loaded.array.shape[1:])
    if task != "classification" and tuple(image.shape[1:]) != spatial:
        # The result is written on the input's grid, so preprocess may not resample for these tasks.
        raise ValueError(f"preprocess changed the spatial shape {spatial} to {tuple(image.shape[1:])}")
    with torch.no_grad():
        result = predict_fn(image.float().unsqueeze(0))
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"predict_fn must return a tensor, got {type(result).__name__}")
    if task == "classification":
        if result.ndim != 2 or result.shape[0] != 1:
            raise ValueError(f"predict_fn must return (1, classes) for classification, got {tuple(result.shape)}")
    elif result.ndim != image.ndim + 1 or result.shape[0] != 1 or tuple(result.shape[2:]) != spatial:
        raise ValueError(f"predict_fn must return (1, K, {', '.join(map(str, spatial))}), "
                         f"got {tuple(result.shape)}")
    return result[0].detach().float().cpu().numpy()


def predict_path(
    input: str | Path,
    output: str | Path,
    predict_fn: PredictFn,
    task: str = "segmentation",
    probabilities: bool = False,
    overwrite: bool = False,
    preprocess: Preprocess | None = None,
    channels: int = 1,
    continue_on_error: bool = False,
    skip_existing: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Predict every case under ``input`` and write the results under ``output``; return the written paths.

    ``input``: a NIfTI, DICOM or raster file, a DICOM series folder, or a folder of such cases (see
    :func:`list_cases`). ``output``: for a single case, a file (NIfTI suffix for NIfTI/DICOM input, .png/.tif/.bmp
    for raster input) or a folder; for a folder of cases, a folder. In a folder each case writes its own name
    (``x.nii.gz`` -> ``x.nii.gz``, series ``ct1/`` and ``a.dcm`` -> ``ct1.nii.gz``, ``a.nii.gz``, any raster
    -> ``<stem>.png``). Classification writes ``<output>/predictions.csv`` (or ``output`` itself if it ends in
    .csv) with columns case, predicted, prob_0..prob_{K-1}.

    ``predict_fn(image)``: image (1, C, *spatial) float32 on the CPU -> (1, K, *spatial) class probabilities
    (segmentation), (1, K) probabilities (classification) or (1, C', *spatial) the restored image
    (restoration). It runs under ``torch.no_grad``. ``preprocess(loaded) -> (C, *spatial)``: the model's input
    (default :func:`default_preprocess`); for segmentation and restoration it must keep the spatial shape.

    ``probabilities`` (segmentation only): also write the (K, *spatial) probabilities: volumes as
    ``<name>_prob.nii.gz`` float32 (x, y, z, K) with the mask's affine; raster as ``<name>_prob.npz`` with key
    "probabilities" (K, H, W) float32.

    ``channels`` > 1 (the model's input channels): NIfTI files named like nnU-Net's ``X_0000.nii.gz``,
    ``X_0001.nii.gz``, ... are stacked into one case ``X`` (written as ``X.nii.gz`` with _0000's geometry);
    naming any one of them as ``input`` predicts that case. A missing channel file is a ValueError.

    Raises FileExistsError (before any prediction) for an existing output unless ``overwrite`` or
    ``skip_existing``; ValueError for unsupported inputs, mismatched output suffixes or clashing output names;
    RuntimeError naming the input file when a case fails (that case leaves no file; earlier cases keep theirs).

    ``continue_on_error``: a case that fails is recorded and the others are still predicted (and the CSV
    written); the failures are listed in ``failed.json`` beside the outputs and in the RuntimeError raised at
    the end. ``skip_existing``: cases whose outputs all exist (for classification: whose row is already in the
    CSV, whose rows are kept) are not predicted again, so a rerun after a failure does only what is missing.
    """
    check_supported(task, PREDICT_TASKS, "predict_path")
    if probabilities and task == "restoration":
        raise ValueError("probabilities=True applies to segmentation (classification always writes them)")
    input, output = Path(input), Path(output)
    preprocess = preprocess or default_preprocess
    cases = find_cases(input, channels)
    single = input.is_file() or is_dicom_series(input)

    rows: list[tuple[str, np.ndarray]] = []
    if task == "classification":
        to_csv = output.name.lower().endswith(".csv")
        if not to_csv and (output.is_file() or looks_like_file(output)):
            raise ValueError(f"{output}: classification output must be a folder or a .csv file")
        csv_path = output if to_csv else output / CSV_NAME
        check_plan([(input, [csv_path])], overwrite or skip_existing)
        if skip_existing and csv_path.is_file():
            rows = read_csv_rows(csv_path)
        done = {name for name, _ in rows}
        plan = [(case, []) for case in cases if case.input.name not in done]
        failures_dir = csv_path.parent
    else:
        plan = plan_outputs(cases, single, output, task, probabilities)
        if skip_existing:
            plan = [(case, paths) for case, paths in plan if not all(path.is_file() for path in paths)]
        check_plan([(case.input, paths) for case, paths in plan], overwrite)
        failures_dir = output.parent if single and looks_like_file(output) else output
    skipped = len(cases) - len(plan)
    if skipped:
        logger.info("%d case(s) skipped: their outputs exist", skipped)

    written: list[Path] = []
    failures: list[dict[str, str]] = []
    for case, paths in tqdm(plan, desc="predict", unit="case", disable=not progress, dynamic_ncols=True):
        try:
            result = _predict_case(case, paths, predict_fn, preprocess, task)
        except Exception as error:  # noqa: BLE001  (with continue_on_error every case's failure is recorded)
            if not continue_on_error:
                raise
            failures.append({"input": str(case.input), "error": str(error)})
            logger.error("%s", error)
            continue
        if task == "classification":
            rows.append((case.input.name, result))
        else:
            written.extend(paths)
    if task == "classification" and rows:
        write_text_atomic(csv_path, csv_text(rows))
        written.append(csv_path)
        logger.info("%d cases -> %s", len(rows), csv_path)
    if failures:
        report = failures_dir / FAILED_NAME
        write_text_atomic(report, json.dumps(failures, indent=2) + "\n")
        raise RuntimeError(f"{len(failures)} of {len(plan)} case(s) failed (listed in {report}; the others were "
                           "written; rerun with --skip-existing after fixing them): "
                           + "; ".join(f["input"] for f in failures))
    return written


def _predict_case(case: Case, paths: list[Path], predict_fn: PredictFn, preprocess: Preprocess,
                  task: str) -> np.ndarray:
    """Load, predict and (dense tasks) write one case; return its result."""
    loaded = load_case(case)  # its errors already name the file
    try:
        result = _run(predict_fn, preprocess(loaded), loaded, task)
        if task != "classification":
            write_case(result, loaded, paths, task)
    except Exception as error:
        raise RuntimeError(f"{case.input}: prediction failed ({type(error).__name__}: {error})") from error
    if task == "classification":
        logger.info("%s: class %d (p=%.3f)", case.input, int(result.argmax()), float(result.max()))
    else:
        logger.info("%s -> %s", case.input, ", ".join(str(p) for p in paths))
    return result


def predict_checkpoint(checkpoint: CheckpointPaths, input: str | Path, output: str | Path, probabilities: bool = False,
                       overwrite: bool = False, tta: bool = False, roi_size: Sequence[int] | None = None,
                       device: str = "auto", continue_on_error: bool = False,
                       skip_existing: bool = False, progress: bool = False) -> list[Path]:
    """``medssm predict``: load a checkpoint and run :func:`predict_path` with the run's own preprocessing
    (the evaluation transforms of its config: intensity normalisation per modality) and inference settings
    (sliding window over the training patch size, overlap, optional flip TTA). ``device``: auto, cpu, cuda or
    cuda:<index>. Several checkpoints (or a cross-validation folder) predict as one ensemble, the mean of their
    probabilities (:class:`~medssm.engine.ensemble.EnsemblePredictor`), with the first one's settings."""
    device = pick_device(device)
    predictor = EnsemblePredictor.load(checkpoint, device)
    meta = predictor.meta
    config = config_from_dict(meta["config"], f"{predictor.names[0]} config")
    task = meta["task"]
    if task == "mil":  # bags: probabilities, instance scores and heat maps (engine/predict_mil.py)
        from .predict_mil import predict_bags

        if len(predictor) != 1:
            raise ValueError(f"predict on bags takes one checkpoint (instance scores do not average), got "
                             f"{len(predictor)}")
        return predict_bags(predictor.models[0], meta, input, output, overwrite=overwrite, device=device)
    if task == "events":  # ICU stays: one probability a stay in predictions.csv (engine/predict_events.py)
        from .predict_events import predict_stays

        return predict_stays(predictor, input, output, overwrite=overwrite, device=device)
    spatial_dims = meta["model_args"]["spatial_dims"]
    in_channels = meta["model_args"]["in_channels"]
    transform = eval_transforms(task, spatial_dims, modality=config.transforms.modality)
    roi = tuple(roi_size) if roi_size else config_roi_size(config, task)
    inf = config.inference

    def preprocess(loaded: LoadedImage) -> torch.Tensor:
        image = default_preprocess(loaded)
        if image.ndim - 1 != spatial_dims:
            raise ValueError(f"{loaded.path}: a {image.ndim - 1}D image, but the model is {spatial_dims}D")
        if image.shape[0] != in_channels:
            raise ValueError(f"{loaded.path}: {image.shape[0]} channel(s), but the model expects {in_channels} "
                             "(one file per case holding all channels)")
        return transform({"image": image})["image"] if transform is not None else image

    def predict_fn(image: torch.Tensor) -> torch.Tensor:
        return predictor(image.to(device), task, roi_size=roi, overlap=inf.overlap,
                         sw_batch_size=inf.sw_batch_size, tta_flips=tta or inf.tta,
                         mode=inf.mode).float().cpu()

    file_task = "classification" if task == "multilabel" else task
    return predict_path(input, output, predict_fn, task=file_task, probabilities=probabilities,
                        overwrite=overwrite, preprocess=preprocess, channels=in_channels,
                        continue_on_error=continue_on_error, skip_existing=skip_existing, progress=progress)

"""predict_path: cases from files and folders, outputs in the input's format and geometry, safe writes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medssm.data.io import load_image
from medssm.engine import predict as predict_module
from medssm.engine.predict import default_preprocess, is_dicom_series, list_cases, predict_path

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_nifti_examples"
ANATOMICAL = EXAMPLES / "nibabel" / "anatomical.nii"
CT_SERIES = EXAMPLES / "monai" / "CT_DICOM"


def threshold_fn(image: torch.Tensor) -> torch.Tensor:
    """(1, C, *spatial) -> (1, 2, *spatial): class 1 where the channel mean is above the image mean."""
    grey = image.mean(dim=1, keepdim=True)
    foreground = (grey > grey.mean()).float()
    return torch.cat([1 - foreground, foreground], dim=1)


def three_class_fn(image: torch.Tensor) -> torch.Tensor:
    """Class 0/1/2 by thirds of the grey range, as one-hot (1, 3, *spatial) probabilities."""
    grey = image.mean(dim=1)
    lo, hi = grey.min(), grey.max()
    labels = ((grey - lo) / (hi - lo + 1e-12) * 3).clamp(max=2.999).long()
    return torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()


def expected_threshold(array: np.ndarray) -> np.ndarray:
    """What threshold_fn predicts for a (C, *spatial) array."""
    grey = array.astype(np.float32).mean(axis=0)
    return (grey > grey.mean()).astype(np.uint8)


def rotated_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-40.5, 12.25, 7.0]
    return affine


def write_nifti(path: Path, shape=(12, 10, 6), seed=0) -> np.ndarray:
    """An int16 NIfTI with a rotated, offset affine, both qform and sform codes set and a display window."""
    data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)
    image = nib.Nifti1Image(data, rotated_affine())
    image.set_qform(rotated_affine(), code=1)
    image.set_sform(rotated_affine(), code=2)
    image.header.set_xyzt_units("mm", "sec")
    image.header["cal_min"], image.header["cal_max"] = 0, 1000
    nib.save(image, path)
    return data


def write_png(path: Path, shape=(9, 14), seed=0, dtype=np.uint8) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, size=shape).astype(dtype)
    Image.fromarray(pixels).save(path)
    return pixels


def no_partial_files(folder: Path) -> bool:
    return not any(".partial" in p.name for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------------- NIfTI / DICOM


def test_nifti_keeps_affine_header_and_mask(tmp_path):
    source = tmp_path / "x.nii.gz"
    data = write_nifti(source)
    written = predict_path(source, tmp_path / "out", threshold_fn)
    out = tmp_path / "out" / "x.nii.gz"
    assert written == [out]
    result, original = nib.load(out), nib.load(source)
    assert np.allclose(result.affine, original.affine)
    assert np.allclose(result.get_qform(), original.get_qform())
    assert result.header["qform_code"] == 1 and result.header["sform_code"] == 2
    assert np.allclose(result.header["pixdim"][1:4], original.header["pixdim"][1:4])
    assert result.header.get_xyzt_units() == ("mm", "sec")
    assert result.shape == data.shape
    assert result.get_data_dtype() == np.uint8
    assert result.header["cal_max"] == 0  # the intensity window is not carried over to the labels
    np.testing.assert_array_equal(np.asarray(result.dataobj), expected_threshold(data[None]))


@pytest.mark.skipif(not ANATOMICAL.exists(), reason="shared example data not present")
def test_anatomical_nii_to_explicit_file(tmp_path):
    out = tmp_path / "seg" / "anat_seg.nii"
    assert predict_path(ANATOMICAL, out, threshold_fn) == [out]
    result, original = nib.load(out), nib.load(ANATOMICAL)
    assert np.allclose(result.affine, original.affine)
    assert result.shape == original.shape
    assert np.allclose(result.header["pixdim"], original.header["pixdim"])
    assert (result.header["qform_code"], result.header["sform_code"]) == (
        original.header["qform_code"], original.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(result.dataobj), expected_threshold(original.get_fdata()[None]))


@pytest.mark.skipif(not CT_SERIES.exists(), reason="shared example data not present")
def test_dicom_series_folder_to_nifti(tmp_path):
    assert is_dicom_series(CT_SERIES)
    assert predict_path(CT_SERIES, tmp_path / "out", threshold_fn) == [tmp_path / "out" / "CT_DICOM.nii.gz"]
    result = nib.load(tmp_path / "out" / "CT_DICOM.nii.gz")
    loaded = load_image(CT_SERIES)
    assert result.shape == (16, 16, 4)
    assert np.allclose(result.affine, loaded.affine)
    assert result.header["qform_code"] == 1 and result.header["sform_code"] == 1
    np.testing.assert_array_equal(np.asarray(result.dataobj), expected_threshold(loaded.array.numpy()))


def test_single_dicom_file_becomes_one_slice_volume(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    source = Path(pydicom_data.get_testdata_file("CT_small.dcm"))
    written = predict_path(source, tmp_path, threshold_fn, probabilities=True)
    assert written == [tmp_path / "CT_small.nii.gz", tmp_path / "CT_small_prob.nii.gz"]
    loaded = load_image(source)
    mask, prob = nib.load(written[0]), nib.load(written[1])
    assert mask.shape == (128, 128, 1) and prob.shape == (128, 128, 1, 2)
    assert np.allclose(mask.affine, loaded.affine) and np.allclose(prob.affine, loaded.affine)
    np.testing.assert_array_equal(np.asarray(mask.dataobj)[..., 0], expected_threshold(loaded.array.numpy()))


def test_nifti_probabilities_on_fourth_dimension(tmp_path):
    source = tmp_path / "x.nii"
    data = write_nifti(source)
    written = predict_path(source, tmp_path / "out", three_class_fn, probabilities=True)
    assert written == [tmp_path / "out" / "x.nii", tmp_path / "out" / "x_prob.nii.gz"]
    prob = nib.load(written[1])
    assert prob.shape == data.shape + (3,) and prob.get_data_dtype() == np.float32
    assert np.allclose(prob.affine, nib.load(source).affine)
    np.testing.assert_allclose(prob.get_fdata().sum(axis=-1), 1.0)
    np.testing.assert_array_equal(np.asarray(nib.load(written[0]).dataobj), prob.get_fdata().argmax(axis=-1))


# ----------------------------------------------------------------------------------------------- raster


def test_png_binary_mask_is_0_255(tmp_path):
    pixels = write_png(tmp_path / "img.png")
    out = tmp_path / "mask.png"
    assert predict_path(tmp_path / "img.png", out, threshold_fn) == [out]
    with Image.open(out) as image:
        assert image.mode == "L"
        mask = np.array(image)
    assert mask.shape == pixels.shape
    np.testing.assert_array_equal(mask, expected_threshold(pixels[None]) * 255)


def test_png_multiclass_mask_is_indices_and_probabilities_npz(tmp_path):
    write_png(tmp_path / "img.png")
    written = predict_path(tmp_path / "img.png", tmp_path / "out", three_class_fn, probabilities=True)
    assert written == [tmp_path / "out" / "img.png", tmp_path / "out" / "img_prob.npz"]
    mask = np.array(Image.open(written[0]))
    prob = np.load(written[1])["probabilities"]
    assert prob.shape == (3, 9, 14) and prob.dtype == np.float32
    assert set(np.unique(mask)) <= {0, 1, 2} and len(np.unique(mask)) == 3
    np.testing.assert_array_equal(mask, prob.argmax(axis=0))


def test_jpg_rgb_input_writes_png_with_same_stem(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, size=(11, 7, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    assert predict_path(tmp_path / "photo.jpg", tmp_path / "out", threshold_fn) == [tmp_path / "out" / "photo.png"]
    mask = np.array(Image.open(tmp_path / "out" / "photo.png"))
    assert mask.shape == (11, 7)
    np.testing.assert_array_equal(mask, expected_threshold(load_image(tmp_path / "photo.jpg").array.numpy()) * 255)


def test_default_preprocess_scales_raster_by_depth(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", dtype=np.uint16)
    for name, top in (("a.png", 255), ("b.png", 65535)):
        loaded = load_image(tmp_path / name)
        torch.testing.assert_close(default_preprocess(loaded), loaded.array / top)


# ----------------------------------------------------------------------------------------------- folders


def test_folder_of_cases(tmp_path, caplog):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_png(cases / "b.png")
    write_nifti(cases / "a.nii.gz")
    (cases / "notes.txt").write_text("not an image")
    (cases / "empty").mkdir()
    pydicom_data = pytest.importorskip("pydicom.data")
    (cases / "series").mkdir()
    shutil.copy(pydicom_data.get_testdata_file("CT_small.dcm"), cases / "series" / "slice0")  # no extension
    with caplog.at_level(logging.WARNING, logger="medssm.engine.cases"):
        assert list_cases(cases) == [cases / "a.nii.gz", cases / "b.png", cases / "series"]
    assert "notes.txt" in caplog.text and "empty" in caplog.text
    written = predict_path(cases, tmp_path / "out", threshold_fn)
    assert sorted(p.name for p in written) == ["a.nii.gz", "b.png", "series.nii.gz"]
    assert nib.load(tmp_path / "out" / "series.nii.gz").shape == (128, 128, 1)
    assert no_partial_files(tmp_path)


def test_folder_output_must_be_a_folder_and_names_must_not_clash(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    with pytest.raises(ValueError, match="must be a folder"):
        predict_path(tmp_path, tmp_path / "out.png", threshold_fn)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="a.jpg"):
        predict_path(tmp_path, tmp_path / "out", threshold_fn)
    assert not (tmp_path / "out").exists()


def test_empty_or_unsupported_inputs_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        predict_path(tmp_path / "empty", tmp_path / "out", threshold_fn)
    (tmp_path / "scan.mha").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="scan.mha.*unsupported"):
        predict_path(tmp_path / "scan.mha", tmp_path / "out", threshold_fn)
    write_png(tmp_path / "img.png")
    with pytest.raises(ValueError, match="must end with"):
        predict_path(tmp_path / "img.png", tmp_path / "img_seg.nii.gz", threshold_fn)
    with pytest.raises(ValueError, match="must end with"):
        predict_path(tmp_path / "img.png", tmp_path / "img_seg.jpg", threshold_fn)  # masks must be lossless
    with pytest.raises(FileNotFoundError):
        predict_path(tmp_path / "missing.png", tmp_path / "out", threshold_fn)


# ----------------------------------------------------------------------------------------------- safety


def test_refuses_to_overwrite_before_any_work_then_overwrite_replaces(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_png(cases / "a.png")
    pixels = write_png(cases / "b.png", seed=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"old")
    calls = []

    def counting_fn(image):
        calls.append(1)
        return threshold_fn(image)

    with pytest.raises(FileExistsError, match="b.png.*--overwrite"):
        predict_path(cases, tmp_path / "out", counting_fn)
    assert calls == [] and not (tmp_path / "out" / "a.png").exists()
    predict_path(cases, tmp_path / "out", counting_fn, overwrite=True)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / "b.png")),
                                  expected_threshold(pixels[None]) * 255)
    with pytest.raises(ValueError, match="replace an input"):
        predict_path(cases, cases, counting_fn, overwrite=True)


def test_failing_case_leaves_nothing_and_names_the_input(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_png(cases / name)
    seen = []

    def fails_on_second(image):
        seen.append(1)
        if len(seen) == 2:
            raise RuntimeError("out of memory")
        return threshold_fn(image)

    with pytest.raises(RuntimeError, match=r"b\.png.*out of memory"):
        predict_path(cases, tmp_path / "out", fails_on_second)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    assert no_partial_files(tmp_path)


def test_failure_while_writing_probabilities_removes_the_mask_too(tmp_path, monkeypatch):
    write_png(tmp_path / "img.png")

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(predict_module.np, "savez_compressed", broken_savez)
    with pytest.raises(RuntimeError, match="img.png.*disk full"):
        predict_path(tmp_path / "img.png", tmp_path / "out", threshold_fn, probabilities=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_wrong_prediction_shape_is_an_error(tmp_path):
    write_png(tmp_path / "img.png")
    with pytest.raises(RuntimeError, match="img.png.*predict_fn must return"):
        predict_path(tmp_path / "img.png", tmp_path / "out", lambda image: threshold_fn(image)[..., :-1])


# ----------------------------------------------------------------------------------------------- other tasks


def test_classification_writes_one_csv(tmp_path):
    for seed, name in enumerate(("a.png", "b.png")):
        write_png(tmp_path / name, seed=seed)

    def classify(image):
        score = image.mean().reshape(1, 1)
        return torch.cat([1 - score, score], dim=1)

    written = predict_path(tmp_path, tmp_path / "out", classify, task="classification")
    assert written == [tmp_path / "out" / "predictions.csv"]
    lines = written[0].read_text().splitlines()
    assert lines[0] == "case,predicted,prob_0,prob_1"
    assert [line.split(",")[0] for line in lines[1:]] == ["a.png", "b.png"]
    for line in lines[1:]:
        _, predicted, p0, p1 = line.split(",")
        assert int(predicted) == int(float(p1) > float(p0))
        assert abs(float(p0) + float(p1) - 1) < 1e-5
    with pytest.raises(FileExistsError):
        predict_path(tmp_path, tmp_path / "out", classify, task="classification")


def test_restoration_keeps_format_dtype_and_range(tmp_path):
    pixels = write_png(tmp_path / "img.png")
    predict_path(tmp_path / "img.png", tmp_path / "same", lambda image: image, task="restoration")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "same" / "img.png")), pixels)
    predict_path(tmp_path / "img.png", tmp_path / "bright", lambda image: image * 4, task="restoration")
    bright = np.array(Image.open(tmp_path / "bright" / "img.png"))
    assert bright.dtype == np.uint8 and bright.max() == 255  # clipped, not wrapped around
    deep = write_png(tmp_path / "deep.png", dtype=np.uint16)
    predict_path(tmp_path / "deep.png", tmp_path / "deep_out.png", lambda image: image, task="restoration")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "deep_out.png")), deep)

    write_nifti(tmp_path / "x.nii.gz")
    predict_path(tmp_path / "x.nii.gz", tmp_path / "vol", lambda image: image * 0.5, task="restoration")
    restored, original = nib.load(tmp_path / "vol" / "x.nii.gz"), nib.load(tmp_path / "x.nii.gz")
    assert restored.get_data_dtype() == np.float32
    assert np.allclose(restored.affine, original.affine)
    np.testing.assert_allclose(restored.get_fdata(), original.get_fdata() * 0.5)


def test_nnunet_channel_files_are_stacked_into_one_case(tmp_path):
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for case in ("a", "b"):
        for c in range(2):
            data = np.full((6, 5, 4), 10.0 * (c + 1), np.float32)
            nib.save(nib.Nifti1Image(data, affine), folder / f"{case}_{c:04d}.nii.gz")
    seen = []

    def predict_fn(image):
        seen.append(tuple(image.shape))
        # class 1 where channel 1 exceeds channel 0 (everywhere here): checks the channel order
        return torch.stack([image[:, 0] > image[:, 1], image[:, 1] > image[:, 0]], 1).float()

    written = predict_path(folder, tmp_path / "out", predict_fn, channels=2)
    assert sorted(p.name for p in written) == ["a.nii.gz", "b.nii.gz"] and seen == [(1, 2, 6, 5, 4)] * 2
    mask = nib.load(tmp_path / "out" / "a.nii.gz")
    assert np.asarray(mask.dataobj).min() == 1 and np.allclose(mask.affine, affine)
    single = predict_path(folder / "b_0001.nii.gz", tmp_path / "one", predict_fn, channels=2)
    assert [p.name for p in single] == ["b.nii.gz"]
    (folder / "b_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match="case b: the model takes 2 channels but b_0001 is missing"):
        predict_path(folder, tmp_path / "out2", predict_fn, channels=2)


def _folder_with_a_bad_case(tmp_path: Path) -> Path:
    cases = tmp_path / "cases"
    cases.mkdir()
    for i in range(3):
        write_png(cases / f"c{i}.png", seed=i)
    (cases / "c1.png").write_bytes(b"not a png")  # unreadable: fails when loaded
    return cases


def test_continue_on_error_writes_the_others_and_lists_the_failures(tmp_path):
    # issue 26, defect 6: a folder stopped at the first unreadable file (classification wrote no CSV at all)
    cases = _folder_with_a_bad_case(tmp_path)
    with pytest.raises(ValueError, match="c1.png"):
        predict_path(cases, tmp_path / "out", threshold_fn)  # the default still stops at the first failure
    with pytest.raises(RuntimeError, match=r"1 of 2 case\(s\) failed .*failed.json.*c1.png"):
        predict_path(cases, tmp_path / "out", threshold_fn, continue_on_error=True, skip_existing=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.png", "c2.png", "failed.json"]
    failed = __import__("json").loads((tmp_path / "out" / "failed.json").read_text())
    assert [Path(f["input"]).name for f in failed] == ["c1.png"] and "c1.png" in failed[0]["error"]
    # the rerun after fixing the file does only what is missing
    write_png(cases / "c1.png", seed=1)
    calls = []
    assert predict_path(cases, tmp_path / "out", lambda x: calls.append(1) or threshold_fn(x),
                        skip_existing=True, overwrite=False) == [tmp_path / "out" / "c1.png"]
    assert len(calls) == 1


def test_classification_continue_on_error_and_skip_existing_keep_the_csv_rows(tmp_path):
    cases = _folder_with_a_bad_case(tmp_path)

    def classify(image: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.25, 0.75]])

    with pytest.raises(RuntimeError, match="c1.png"):
        predict_path(cases, tmp_path / "out", classify, task="classification", continue_on_error=True)
    csv_path = tmp_path / "out" / "predictions.csv"
    assert [line.split(",")[0] for line in csv_path.read_text().splitlines()] == ["case", "c0.png", "c2.png"]
    with pytest.raises(FileExistsError):
        predict_path(cases, tmp_path / "out", classify, task="classification")
    write_png(cases / "c1.png", seed=1)
    predict_path(cases, tmp_path / "out", classify, task="classification", skip_existing=True)
    assert [line.split(",")[0] for line in csv_path.read_text().splitlines()] == ["case", "c0.png", "c2.png",
                                                                                    "c1.png"]

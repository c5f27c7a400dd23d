"""load_image / read_raster on real files: rasters written with Pillow, NIfTI from nibabel (its example files
and ones written here), DICOM from pydicom's test files; broken inputs give errors naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medssm.data import image_kind, load_image, read_raster


def ramp(height: int, width: int, dtype=np.uint8, scale: int = 1) -> np.ndarray:
    """Distinct values per pixel, so that a transposed or flipped read cannot pass."""
    return ((np.arange(height * width).reshape(height, width) * scale) % (np.iinfo(dtype).max + 1)).astype(dtype)


def test_raster_grey_keeps_pixels_and_orientation(tmp_path):
    pixels = ramp(7, 11)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    loaded = load_image(tmp_path / "grey.png")
    assert loaded.kind == "raster" and loaded.array.shape == (1, 7, 11) and loaded.array.dtype == torch.float32
    assert np.array_equal(loaded.array[0].numpy(), pixels)
    assert loaded.spacing == (1.0, 1.0) and np.array_equal(loaded.affine, np.eye(4))
    assert loaded.meta["dtype"] == "uint8" and loaded.spatial_dims == 2


def test_raster_rgb_rgba_and_palette_become_three_channels(tmp_path):
    rgb = np.stack([ramp(6, 5), ramp(6, 5, scale=3), np.full((6, 5), 200, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.array.shape == (3, 6, 5)
    assert np.array_equal(loaded.array.numpy(), np.moveaxis(rgb, -1, 0))
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png").array.numpy(), np.moveaxis(rgb, -1, 0))

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.save(tmp_path / "palette.png")
    colours = load_image(tmp_path / "palette.png").array
    assert colours.shape == (3, 2, 3)
    assert colours[:, 0, 1].tolist() == [255, 0, 0] and colours[:, 0, 2].tolist() == [0, 0, 255]
    # read_raster gives palette indices unless asked to convert
    assert np.array_equal(read_raster(tmp_path / "palette.png"), indices)
    assert read_raster(tmp_path / "palette.png", "L").shape == (2, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_raster_16_bit_keeps_depth(tmp_path, suffix):
    pixels = ramp(9, 8, np.uint16, scale=900)
    assert pixels.max() > 255
    Image.fromarray(pixels).save(tmp_path / f"deep{suffix}")
    loaded = load_image(tmp_path / f"deep{suffix}")
    assert loaded.array.shape == (1, 9, 8) and loaded.meta["dtype"] == "uint16"
    assert np.array_equal(loaded.array[0].numpy(), pixels.astype(np.float32))


def test_nifti_example_files_match_nibabel():
    path = Path(NIBABEL_DATA) / "anatomical.nii"
    reference = nib.load(path)
    loaded = load_image(path)
    assert loaded.kind == "nifti" and loaded.array.shape == (1, 33, 41, 25)
    assert np.array_equal(loaded.array[0].numpy(), np.asanyarray(reference.dataobj).astype(np.float32))
    np.testing.assert_allclose(loaded.affine, reference.affine)
    assert loaded.spacing == pytest.approx((2.0, 2.0, 2.0))

    four_d = load_image(Path(NIBABEL_DATA) / "example4d.nii.gz")  # (128, 96, 24, 2): the last axis is channels
    data = np.asanyarray(nib.load(Path(NIBABEL_DATA) / "example4d.nii.gz").dataobj)
    assert four_d.array.shape == (2, 128, 96, 24)
    np.testing.assert_allclose(four_d.array[1].numpy(), data[..., 1], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_written_here_keeps_values_affine_and_spacing(tmp_path, suffix):
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 50
    affine = np.diag([-0.5, 0.8, 3.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 2.0]
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / f"vol{suffix}")
    loaded = load_image(tmp_path / f"vol{suffix}")
    assert loaded.array.shape == (1, 4, 5, 6) and np.array_equal(loaded.array[0].numpy(), volume)
    np.testing.assert_allclose(loaded.affine, affine, atol=1e-6)
    assert loaded.spacing == pytest.approx((0.5, 0.8, 3.0), abs=1e-6)


def test_dicom_ct_small_is_transposed_pixel_array_in_hounsfield():
    path = get_testdata_file("CT_small.dcm")
    reference = pydicom.dcmread(path)
    loaded = load_image(path)
    assert loaded.kind == "dicom" and loaded.array.shape == (1, 128, 128)
    hounsfield = reference.pixel_array * float(reference.RescaleSlope) + float(reference.RescaleIntercept)
    # MONAI's voxel order is (column, row): the transpose of pixel_array, matching the affine.
    np.testing.assert_allclose(loaded.array[0].numpy(), hounsfield.T)
    assert loaded.spacing == pytest.approx((0.661468, 0.661468), abs=1e-6)


def test_dicom_series_folder_stacks_slices_in_instance_order(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    # Written out of file-name order on purpose; MONAI stacks by InstanceNumber (here in step with z).
    for i, (z, number) in enumerate(((5.0, 3), (0.0, 1), (2.5, 2))):
        ds = pydicom.dcmread(source)
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, z]
        ds.InstanceNumber = number
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PixelData = (ds.pixel_array + 100 * i).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(tmp_path / f"slice{i}.dcm")
    loaded = load_image(tmp_path)
    assert loaded.kind == "dicom" and loaded.array.shape == (1, 128, 128, 3)
    assert loaded.spacing[2] == pytest.approx(2.5)
    means = loaded.array[0].mean(dim=(0, 1))
    # In z order the slices were written with offsets +100 (z=0), +200 (z=2.5), +0 (z=5).
    assert (means - means.min()).round().tolist() == [100.0, 200.0, 0.0]


def test_missing_unsupported_and_broken_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: unsupported file type"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="unsupported"):
        image_kind(tmp_path / "scan.mha")

    Image.fromarray(ramp(64, 64)).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut_header.png").write_bytes(good[:20])
    (tmp_path / "cut_pixels.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    for name in ("cut_header.png", "cut_pixels.png", "text.png"):
        with pytest.raises(ValueError, match=f"{name}: cannot read image"):
            load_image(tmp_path / name)
        with pytest.raises(ValueError, match=name):
            read_raster(tmp_path / name)

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16), dtype=np.float32), np.eye(4)),
             tmp_path / "good.nii.gz")
    volume = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(volume[: len(volume) // 2])
    with pytest.raises(ValueError, match=r"cut.nii.gz: cannot read nifti image \(EOFError"):
        load_image(tmp_path / "cut.nii.gz")
    (tmp_path / "text.nii.gz").write_bytes(b"hello")
    with pytest.raises(ValueError, match="text.nii.gz: cannot read nifti image .*not a gzip file"):
        load_image(tmp_path / "text.nii.gz")

    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(dicom[: len(dicom) // 2])
    with pytest.raises(ValueError, match="cut.dcm: cannot read dicom image"):
        load_image(tmp_path / "cut.dcm")
    (tmp_path / "text.dcm").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"text.dcm: cannot read dicom image \(InvalidDicomError"):
        load_image(tmp_path / "text.dcm")

"""Transform presets: geometry moves image, label and fov together; crops have the patch size; intensity
presets give the documented values; outputs are plain tensors that collate."""

from __future__ import annotations

import pytest
import torch
from data_checks import check_batches
from torch.utils.data import DataLoader, default_collate

from medssm.data import SyntheticSegmentation, eval_transforms, train_transforms


def aligned_item(shape: tuple[int, ...], seed: int = 0) -> dict:
    """image channel 0 == label == fov, with distinct values per voxel in channel 1 to catch misalignment."""
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand((1, *shape), generator=generator) > 0.8).long()
    ramp = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(1, *shape)
    return {"image": torch.cat([label.float(), ramp]), "label": label, "fov": label.to(torch.uint8),
            "name": "case"}


@pytest.mark.parametrize(("shape", "patch"), [((40, 40), (16, 16)), ((30, 22), (16, 16)), ((10, 12, 9), (8, 8, 8)),
                                              ((5, 7), (8, 8))])
def test_geometry_keeps_image_label_fov_aligned(shape, patch):
    transform = train_transforms("segmentation", len(shape), patch_size=patch)
    transform.set_random_state(0)
    ramp_values = set(aligned_item(shape)["image"][1].flatten().tolist())
    for seed in range(12):
        out = transform(aligned_item(shape, seed))
        assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor  # no MetaTensor left
        assert out["image"].shape == (2, *patch) and out["label"].shape == (1, *patch)
        assert out["label"].dtype == torch.int64 and out["fov"].dtype == torch.uint8 and out["name"] == "case"
        assert torch.equal(out["image"][0].long(), out["label"][0]) and torch.equal(out["fov"][0].long(),
                                                                                     out["label"][0])
        assert set(out["image"][1].flatten().tolist()) <= ramp_values | {0.0}  # moved voxels, no interpolation


def test_flips_and_rotations_happen_and_are_seeded():
    transform = train_transforms("segmentation", 2)
    item = aligned_item((6, 6))
    outputs = []
    for seed in range(16):
        transform.set_random_state(seed)
        outputs.append(transform(item)["image"][1])
    distinct = {tuple(o.flatten().tolist()) for o in outputs}
    assert len(distinct) >= 5  # 8 possible orientations of a square
    assert all(sorted(o.flatten().tolist()) == sorted(item["image"][1].flatten().tolist()) for o in outputs)
    transform.set_random_state(3)
    assert torch.equal(transform(item)["image"][1], outputs[3])


def test_rotations_keep_the_shape_of_non_square_images():
    transform = train_transforms("restoration", 2)
    item = {"image": torch.rand(1, 5, 9), "label": torch.rand(1, 5, 9)}
    item["label"] = item["image"].clone()
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(item)
        assert out["image"].shape == (1, 5, 9) and torch.equal(out["image"], out["label"])
        assert out["label"].dtype == torch.float32


def test_foreground_oversampling():
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    label[0, 60:63, 2:5] = 1  # one small object in a corner
    item = {"image": label.float(), "label": label}

    def hit_rate(ratio: float) -> float:
        transform = train_transforms("segmentation", 2, patch_size=(16, 16), pos_neg_ratio=ratio, flips=False,
                                     rotations=False)
        transform.set_random_state(0)
        return sum(int(transform(item)["label"].sum() > 0) for _ in range(60)) / 60

    assert hit_rate(1e6) == 1.0  # every crop centred on the object
    assert 0.3 < hit_rate(1.0) < 0.8
    assert hit_rate(0.0) < 0.15  # centred on background: the corner object is rarely inside


def test_classification_defaults_leave_geometry_alone():
    image = torch.rand(3, 8, 8)
    item = {"image": image, "label": torch.tensor(2)}
    out = train_transforms("classification", 2)(item)
    assert torch.equal(out["image"], image) and int(out["label"]) == 2 and out["label"].dtype == torch.int64
    flipped = train_transforms("classification", 2, flips=True)
    seen = set()
    for seed in range(8):
        flipped.set_random_state(seed)
        seen.add(tuple(flipped(item)["image"].flatten().tolist()))
    assert len(seen) > 1
    cropped = train_transforms("multilabel", 2, patch_size=(4, 4))({"image": image, "label": torch.ones(5)})
    assert cropped["image"].shape == (3, 4, 4) and cropped["label"].shape == (5,)


def test_intensity_presets():
    ct = {"image": torch.tensor([[[-2000.0, -1000.0, 0.0, 500.0, 3000.0]]]), "label": torch.zeros(1, 1, 5).long()}
    assert eval_transforms("segmentation", 2, "ct")(ct)["image"].flatten().tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    narrow = eval_transforms("segmentation", 2, "ct", ct_window=(-100.0, 100.0))(ct)["image"]
    assert narrow.flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]

    mr = torch.zeros(2, 8, 8)
    mr[0, 2:6, 2:6] = torch.arange(16.0).reshape(4, 4) * 10 + 300
    mr[1, 1:7, 1:7] = 5.0 + torch.arange(36.0).reshape(6, 6)
    out = eval_transforms("segmentation", 2, "mr")({"image": mr, "label": torch.zeros(1, 8, 8).long()})["image"]
    for c in range(2):
        inside = out[c][mr[c] != 0]
        assert abs(inside.mean().item()) < 1e-5 and abs(inside.std(unbiased=False).item() - 1) < 1e-4
        assert torch.all(out[c][mr[c] == 0] == 0)  # the background stays zero

    signal = torch.stack([torch.linspace(0, 10, 50), torch.linspace(-3, 100, 50)])
    out = eval_transforms("classification", 1, "signal")({"image": signal, "label": torch.tensor(0)})["image"]
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)

    raster = torch.rand(1, 4, 4)
    assert torch.equal(eval_transforms("segmentation", 2)({"image": raster, "label": torch.zeros(1, 4, 4).long()})
                       ["image"], raster)

    noisy = {"image": torch.full((1, 2, 2), 1000.0), "label": torch.full((1, 2, 2), 0.0)}
    out = eval_transforms("restoration", 2, "ct")(noisy)  # the same window maps input and target
    assert out["image"].flatten().tolist() == [1.0] * 4 and out["label"].flatten().tolist() == [0.5] * 4


def test_signal_training_pipeline_never_rotates_or_flips_by_default():
    signal = torch.linspace(0, 1, 30).reshape(1, 30)
    out = train_transforms("classification", 1, modality="signal", rotations=True)({"image": signal,
                                                                                     "label": torch.tensor(1)})
    assert out["image"][0, 0] < out["image"][0, -1]  # still increasing: not time-reversed


def test_transformed_datasets_collate():
    transform = train_transforms("segmentation", 2, patch_size=(32, 32))
    ds = SyntheticSegmentation(6, (48, 40), transform=transform)
    batch = check_batches(ds, batch_size=6)
    assert batch["image"].shape == (6, 1, 32, 32) and batch["label"].dtype == torch.int64
    ds3 = SyntheticSegmentation(3, (20, 18, 16), transform=train_transforms("segmentation", 3, (16, 16, 16)))
    batch = next(iter(DataLoader(ds3, batch_size=3, collate_fn=default_collate)))
    assert batch["image"].shape == (3, 1, 16, 16, 16)


def test_argument_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        train_transforms("detection", 2)
    with pytest.raises(ValueError, match="modality must be one of"):
        eval_transforms("segmentation", 2, "pet")
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        train_transforms("segmentation", 4)
    with pytest.raises(ValueError, match=r"patch_size \(16,\) needs 2 positive sizes"):
        train_transforms("segmentation", 2, patch_size=(16,))
    with pytest.raises(ValueError, match="ct_window must be"):
        eval_transforms("segmentation", 3, "ct", ct_window=(100.0, -100.0))
    with pytest.raises(ValueError, match="pos_neg_ratio must be >= 0"):
        train_transforms("segmentation", 2, patch_size=(8, 8), pos_neg_ratio=-1)

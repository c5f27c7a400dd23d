"""Shared checks for the dataset tests: the item contract and batching with default_collate."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, default_collate


def check_item(item: dict, dataset) -> None:
    """``item`` follows the contract for ``dataset.task`` / ``spatial_dims`` / ``in_channels``."""
    image, label = item["image"], item["label"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32  # plain tensors, never MetaTensor
    assert image.dim() == dataset.spatial_dims + 1 and image.shape[0] == dataset.in_channels
    assert type(label) is torch.Tensor
    if dataset.task == "segmentation":
        assert label.dtype == torch.int64 and label.shape == (1, *image.shape[1:])
        assert 0 <= int(label.min()) and int(label.max()) < dataset.num_classes
    elif dataset.task == "classification":
        assert label.dtype == torch.int64 and label.dim() == 0 and 0 <= int(label) < dataset.num_classes
    elif dataset.task == "multilabel":
        assert label.dtype == torch.float32 and label.shape == (dataset.num_classes,)
    else:
        assert dataset.task == "restoration" and label.dtype == torch.float32 and label.shape == image.shape
    if "fov" in item:
        assert type(item["fov"]) is torch.Tensor and item["fov"].dtype == torch.uint8
        assert item["fov"].shape == (1, *image.shape[1:]) and set(item["fov"].unique().tolist()) <= {0, 1}
    if "name" in item:
        assert isinstance(item["name"], str)


def check_batches(dataset, batch_size: int = 2) -> dict:
    """A DataLoader with default_collate stacks ``batch_size`` items of ``dataset``; returns the batch."""
    check_item(dataset[0], dataset)
    size = min(batch_size, len(dataset))
    batch = next(iter(DataLoader(dataset, batch_size=size, collate_fn=default_collate)))
    assert batch["image"].shape[0] == size and batch["image"].dtype == torch.float32
    assert batch["label"].shape[0] == size
    if "name" in batch:
        assert len(batch["name"]) == size and all(isinstance(n, str) for n in batch["name"])
    return batch

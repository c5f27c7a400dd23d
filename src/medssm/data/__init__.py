"""Datasets for medical files: MedMNIST npz, UCR time-series text files."""

from .medmnist import MedMNIST
from .ucr import UCRDataset

__all__ = ["MedMNIST", "UCRDataset"]

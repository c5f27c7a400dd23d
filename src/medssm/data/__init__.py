"""Datasets for medical files (MedMNIST npz so far)."""

from .medmnist import MedMNIST

__all__ = ["MedMNIST"]

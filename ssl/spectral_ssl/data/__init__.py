"""Datasets (LightningDataModules) and the augmentation views."""

from .digits import DigitsDataModule
from .views import Augmentation, MultiView, SeededEpochSampler, TensorImageDataset

__all__ = ["Augmentation", "DigitsDataModule", "MultiView", "SeededEpochSampler", "TensorImageDataset"]

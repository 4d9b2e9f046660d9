"""Datasets (LightningDataModules) and the augmentation views.

Each datamodule reads one on-disk format and shares the loaders of :class:`SSLDataModule`:
:class:`DigitsDataModule` (built in), :class:`CIFARDataModule` (CIFAR-10/100, torchvision's
python folder), :class:`STL10DataModule` (binary folder), :class:`ImageFolderDataModule`
(ImageNet, ImageNet-100, any class-per-folder tree of JPEGs).
"""

from .base import SkippedImagesReport, SSLDataModule
from .digits import DigitsDataModule
from .folder import ImageFileDataset, ImageFolderDataModule, UnreadableImageError
from .index import ImageIndex
from .subsets import balanced_order, balanced_subset
from .tensor_sets import CIFARDataModule, STL10DataModule
from .views import Augmentation, MultiView, ResumableLoader, SeededEpochSampler, TensorImageDataset

__all__ = [
    "Augmentation",
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageIndex",
    "MultiView",
    "ResumableLoader",
    "SSLDataModule",
    "STL10DataModule",
    "SeededEpochSampler",
    "SkippedImagesReport",
    "TensorImageDataset",
    "UnreadableImageError",
    "balanced_order",
    "balanced_subset",
]

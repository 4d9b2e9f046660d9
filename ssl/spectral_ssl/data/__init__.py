"""Datasets (LightningDataModules) and the augmentation views.

Each datamodule is a data source, one on-disk format, under the loaders of :class:`SSLDataModule`
(:mod:`.loaders`: the resumable training loader, the clean evaluation loader):
:class:`DigitsDataModule` (built in), :class:`CIFARDataModule` (CIFAR-10/100, torchvision's
python folder), :class:`STL10DataModule` (binary folder), :class:`MNISTDataModule` (MNIST,
Fashion-MNIST, KMNIST, EMNIST: IDX files), :class:`ImageFolderDataModule` (ImageNet,
ImageNet-100, any class-per-folder tree of JPEGs).
"""

from .base import LinearEvaluationData, ResumableDataModule, SkippedImagesReport, SSLDataModule
from .digits import DigitsDataModule
from .folder import ImageFileDataset, ImageFolderDataModule, UnreadableImageError
from .index import ImageIndex
from .loaders import ResumableLoader, evaluation_loader, training_loader
from .mnist import IDXError, MNISTDataModule, read_idx
from .subsets import balanced_order, balanced_subset, stratified_fraction
from .tensor_sets import CIFARDataModule, STL10DataModule
from .views import Augmentation, MultiView, SeededEpochSampler, TensorImageDataset

__all__ = [
    "Augmentation",
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "IDXError",
    "ImageIndex",
    "LinearEvaluationData",
    "MNISTDataModule",
    "MultiView",
    "ResumableDataModule",
    "ResumableLoader",
    "SSLDataModule",
    "STL10DataModule",
    "SeededEpochSampler",
    "SkippedImagesReport",
    "TensorImageDataset",
    "UnreadableImageError",
    "balanced_order",
    "balanced_subset",
    "stratified_fraction",
    "evaluation_loader",
    "read_idx",
    "training_loader",
]

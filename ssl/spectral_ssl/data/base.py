"""The datamodule over a data source.

A dataset is a *source*: its images and labels per split (:meth:`SSLDataModule.dataset`,
:meth:`~SSLDataModule.labels`) and its statistics (``num_classes``, ``mean``, ``std``,
``image_size``); each format implements those (digits, CIFAR, STL-10, ImageFolder), plus what
is its own: reading its files in ``setup``, its evaluation resize, ImageFolder's decoding of
JPEGs on the device. Over a source, the loaders of :mod:`.loaders`: the pretraining views
(:meth:`~SSLDataModule.train_dataloader`, resumable mid-epoch), the linear
protocol's augmented labelled images (:class:`LinearEvaluationData`), and one clean evaluation
loader (:meth:`~SSLDataModule.eval_dataloader`) for the monitors, the linear protocol's validation
and the evaluation commands. The LightningDataModule is the thin layer on top: Lightning calls
its ``setup`` before anything reads the source."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .device_augment import DeviceViews
from .loaders import ResumableLoader, evaluation_loader, training_loader
from .views import Augmentation, MultiView

log = logging.getLogger(__name__)
Split = Literal["pretrain", "train", "test"]


class Normalize:
    """uint8 image(s) -> float32 (x / 255 - mean) / std: the deterministic evaluation transform."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        return (image.float().div(255) - self.mean) / self.std


class ResumableDataModule(L.LightningDataModule):
    """A LightningDataModule whose training loader resumes mid-epoch (:class:`.loaders.ResumableLoader`):
    it makes the loader for this process, positioned by :meth:`training_position`. It also
    takes the paths of unreadable images out of every batch
    (:func:`.loaders.collate_skipping`) and keeps them for :class:`SkippedImagesReport`."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []

    def _training_loader(
        self, dataset: Dataset, batch_size: int, num_workers: int, seed: int, drop_last: bool, **kwargs
    ) -> ResumableLoader:
        """:func:`.loaders.training_loader` of ``dataset`` for this process (its shard under DDP),
        at the epoch the trainer is about to train (0 without one); its state is :meth:`training_position`."""
        trainer = self.trainer
        return training_loader(
            dataset,
            batch_size,
            num_workers,
            seed,
            self.training_position,
            # the epoch Lightning is about to train (current_epoch lags after an end-of-epoch checkpoint)
            epoch=trainer.fit_loop.epoch_progress.current.processed if trainer else 0,
            processes=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            accumulate=trainer.accumulate_grad_batches if trainer else 1,
            drop_last=drop_last,
            **kwargs,
        )

    def training_position(self) -> tuple[int, int]:
        """(epoch, batches of it that finished their step): where a checkpoint written now
        resumes. Lightning's batch progress is the one record of it (see :class:`.loaders.ResumableLoader`)."""
        trainer = self.trainer
        epoch, batches = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return (epoch + 1, 0) if batches >= trainer.num_training_batches else (epoch, batches)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Takes out the paths of unreadable images (:func:`.loaders.collate_skipping`)."""
        if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[2], list):
            data, labels, skipped = batch
            self.skipped += skipped
            if data is None:
                raise RuntimeError(f"every image of a batch was unreadable (e.g. {skipped[0]}); check the dataset")
            return data, labels
        return batch

    def pop_skipped(self) -> list[str]:
        """The paths of images skipped since the last call (see :class:`SkippedImagesReport`)."""
        skipped, self.skipped = self.skipped, []
        return skipped


class SSLDataModule(ResumableDataModule):
    """Base of the datamodules. A dataset implements :meth:`dataset` (its images for a split with a
    transform) and sets ``num_classes``, ``mean``, ``std`` and ``image_size``.

    Pretraining batches are ``([view_0, ..., view_{V-1}], labels)``. ``augment`` is one recipe used
    for ``num_views`` views, or a list with one recipe per view (asymmetric views such as BYOL's, or
    multi-crop: 2 global + N small crops of other sizes, then ``num_views`` is ignored); None, the
    dataset's own recipe. The view
    stream depends only on (``seed``, epoch, image): see :class:`~.views.SeededEpochSampler`.
    ``eval_resize``: side the evaluation images are resized to before a centre crop of
    ``image_size`` (file datasets; 256 for ImageNet's 224).
    """

    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    image_size: int

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = 4,
        num_views: int = 2,
        augment: Augmentation | list[Augmentation] | None = None,
        seed: int = 0,
        augment_on_device: bool = False,
    ) -> None:
        super().__init__()
        # the dataset's own init args (the subclass's, through Lightning's frame walk; the commands'
        # config under LightningCLI), in every checkpoint: evaluation and export know the data
        self.save_hyperparameters(logger=False)
        self.hparams.update({key: _plain(value) for key, value in self.hparams.items()})
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        self.batch_size, self.num_workers, self.num_views, self.seed = batch_size, num_workers, num_views, seed
        self.augment, self.augment_on_device = augment or Augmentation(), augment_on_device
        self.device_views: DeviceViews | None = None  # augment_on_device's views

    # --- what a dataset implements ------------------------------------------------------------
    def dataset(self, split: Split, transform: Callable | None) -> Dataset:
        """The images of ``split`` ("pretrain": the images SSL trains on, "train"/"test": the
        labelled ones), returning ``transform(image), label``; indexable by ``(index, seed)``."""
        raise NotImplementedError

    def labels(self, split: Split) -> Tensor:
        """The labels of ``split`` in dataset order, without reading any image (subsets are
        chosen from them)."""
        raise NotImplementedError

    def pretrain_tensors(self) -> tuple[Tensor, Tensor]:
        """The whole pretraining split as one uint8 (N, 3, H, W) tensor and its labels (-1 where
        unlabeled), for ``augment_on_device`` (datasets held in memory implement it)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot hold its images on the device; set data.augment_on_device=false"
        )

    # --- transforms --------------------------------------------------------------------------
    def view_recipes(self) -> list[Augmentation]:
        return list(self.augment) if isinstance(self.augment, (list, tuple)) else [self.augment] * self.num_views

    @property
    def view_sizes(self) -> tuple[int, ...]:
        """The sides of the pretraining views, largest first (the commands link them to the
        backbone, which is built to take each and checked on each)."""
        return tuple(sorted({recipe.size for recipe in self.view_recipes()}, reverse=True))

    reduced_decode: bool = True
    """JPEG files may be decoded at a reduced size where the crops allow (file datasets; see
    :func:`~.cpu_augment.make_views`); False: always whole, as torchvision's pipeline."""

    def view_transforms(self) -> list[Callable]:
        """The pretraining views in DataLoader workers: one transform per recipe."""
        return [recipe.build(self.mean, self.std, self.reduced_decode) for recipe in self.view_recipes()]

    def eval_transform(self) -> Callable:
        return Normalize(*self.eval_normalization)

    @property
    def eval_normalization(self) -> tuple[Sequence[float], Sequence[float]]:
        """(mean, std) of the clean evaluation images: ``eval_mean`` / ``eval_std`` where a dataset
        sets them (the official INTL CIFAR evaluation's), else the training views' own."""
        return (self.eval_mean or self.mean, self.eval_std or self.std)

    eval_mean: Sequence[float] | None = None
    eval_std: Sequence[float] | None = None

    def linear_train_transform(self) -> Callable:
        """RandomResizedCrop (bilinear, torchvision's default, as the official INTL / MoCo / solo-learn
        linear protocols use it) + flip, nothing else: the linear-evaluation protocol's training view,
        normalized as the evaluation images are."""
        recipe = Augmentation(
            size=self.image_size, scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, interpolation="bilinear"
        )
        return recipe.build(*self.eval_normalization, self.reduced_decode)

    # --- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.augment_on_device:  # the loader yields image indices; the images wait on the device
            images, labels = self.pretrain_tensors()
            self.device_views = DeviceViews(self.view_recipes(), self.mean, self.std, self.seed, resident=images)
            dataset: Dataset = _Indices(labels)
        else:
            dataset = self.dataset("pretrain", MultiView(self.view_transforms()))
        self.check_batch_size(len(dataset))  # type: ignore[arg-type]
        return self._training_loader(dataset, self.batch_size, self.num_workers, self.seed, drop_last=True)

    def check_batch_size(self, images: int) -> None:
        """Refuses a per-device batch that cannot train: one image (BatchNorm and the whitening
        need two per device), or more than a process's share of the training set (every batch
        of an epoch is full, so there would be none and nothing would train)."""
        processes = self.trainer.world_size if self.trainer else 1
        if self.batch_size < 2:
            raise ValueError(
                f"data.batch_size={self.batch_size}: the projector's BatchNorm and the whitening need at "
                "least 2 images per device"
            )
        if images // processes < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {images // processes} training "
                f"images each of the {processes} process(es) gets ({images} in all): no full batch, "
                "nothing would train; lower data.batch_size"
            )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment_on_device``: the training batch (indices, or decoded images) becomes V views
        made on the device (:class:`~.device_augment.DeviceViews`), seeded by its position (this
        batch's number: it is not counted yet) and this process's rank, and converted as Lightning's
        precision converts every batch (bfloat16 under ``bf16-true``; it did so before the views existed)."""
        trainer = self.trainer
        if self.device_views is None or trainer is None or not trainer.training:
            return batch
        data, labels = batch
        views = self.device_views(data, labels.device, *self.training_position(), rank=trainer.global_rank)
        return trainer.precision_plugin.convert_input(views), labels

    def eval_dataloader(self, split: Split, batch_size: int = 512, indices: Tensor | None = None) -> DataLoader:
        """Clean (un-augmented, normalized) labelled images of ``split`` in dataset order, or only
        those at ``indices`` (:func:`.loaders.evaluation_loader`): the one evaluation loader."""
        return evaluation_loader(self.dataset(split, self.eval_transform()), batch_size, self.num_workers, indices)

    def knn_dataloaders(self, batch_size: int = 512) -> tuple[DataLoader, DataLoader]:
        """Clean labelled train images (a kNN bank, cached linear features) and the test images:
        :meth:`eval_dataloader` of both splits."""
        return self.eval_dataloader("train", batch_size), self.eval_dataloader("test", batch_size)


def _plain(value):
    """A hyper-parameter as plain values (a checkpoint loads with ``weights_only=True``): recipes as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class LinearEvaluationData(ResumableDataModule):
    """A datamodule's images through the linear-evaluation protocol (``spectral-ssl linear``):
    augmented labelled train images (:meth:`SSLDataModule.linear_train_transform`; shuffled per
    epoch, sharded under DDP, resumable) and the clean validation images
    (:meth:`SSLDataModule.eval_dataloader`). ``batch_size``: per device (default: the dataset's)."""

    def __init__(self, data: SSLDataModule, batch_size: int | None = None) -> None:
        super().__init__()
        self.data, self.batch_size = data, batch_size or data.batch_size

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def train_dataloader(self) -> ResumableLoader:
        dataset = self.data.dataset("train", self.data.linear_train_transform())
        return self._training_loader(dataset, self.batch_size, self.data.num_workers, self.data.seed, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.data.eval_dataloader("test", self.batch_size)


class SkippedImagesReport(L.Callback):
    """At the end of every training epoch: how many unreadable images the datamodule skipped
    (each was already logged with its path when it was met), as a warning and ``data/skipped``
    (summed over the ranks here, by every rank at the same point, so the logged value needs no
    collective of Lightning's: see :mod:`spectral_ssl.evaluation.monitor`). The commands add it to
    every trainer; with a Trainer of your own, pass it in ``callbacks``."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pop = getattr(trainer.datamodule, "pop_skipped", None)
        skipped = pop() if pop else []
        if skipped:
            log.warning(
                "epoch %d: skipped %d unreadable image(s), e.g. %s",
                trainer.current_epoch,
                len(skipped),
                ", ".join(skipped[:3]),
            )
        total = trainer.strategy.reduce(torch.tensor(float(len(skipped)), device=pl_module.device), reduce_op="sum")
        pl_module.log("data/skipped", total)


class _Indices(Dataset):
    """Yields (index, label): the training batches of ``augment_on_device`` carry no pixels."""

    def __init__(self, labels: Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return index, int(self.labels[index])

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
import os
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .device_augment import DeviceViews
from .loaders import ResumableLoader, evaluation_loader, training_loader
from .subsets import stratified_fraction
from .views import Augmentation, MultiView

log = logging.getLogger(__name__)
Split = Literal["pretrain", "train", "test"]
DEFAULT_WORKERS = min(8, len(os.sched_getaffinity(0)))
"""DataLoader worker processes by default: one per core this process may run on, at most 8."""


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

    The options every dataset takes are this class's (a dataset's own ``__init__`` passes them
    on as ``**kwargs``): ``batch_size`` (per device), ``num_workers`` (DataLoader processes;
    default :data:`DEFAULT_WORKERS`), ``num_views``, ``augment``, ``seed``, ``augment_on_device``
    and the labelled subset. ``label_fraction`` (in (0, 1]) or ``label_subset`` (a text file,
    one image per line: a file name of the ``train`` split, as SimCLR's and the official INTL
    1% / 10% ImageNet lists give them, or its path relative to the split's folder; the image's
    index for datasets without file names) restricts the labelled training images, those the
    classifiers of ``linear``, ``finetune`` and ``linear-fast`` train on and the kNN bank holds,
    to a stratified seeded fraction (:func:`~.subsets.stratified_fraction`, seeded by ``seed``)
    or to the listed images (:meth:`labelled_indices`); pretraining always sees every image.
    """

    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    image_size: int

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = DEFAULT_WORKERS,
        num_views: int = 2,
        augment: Augmentation | list[Augmentation] | None = None,
        seed: int = 0,
        augment_on_device: bool = False,
        label_fraction: float | None = None,
        label_subset: str | None = None,
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
        self.label_fraction, self.label_subset = label_fraction, label_subset

    # --- what a dataset implements ------------------------------------------------------------
    def dataset(self, split: Split, transform: Callable | None) -> Dataset:
        """The images of ``split`` ("pretrain": the images SSL trains on, "train"/"test": the
        labelled ones), returning ``transform(image), label``; indexable by ``(index, seed)``."""
        raise NotImplementedError

    def labels(self, split: Split) -> Tensor:
        """The labels of ``split`` in dataset order, without reading any image (subsets are
        chosen from them)."""
        raise NotImplementedError

    def image_names(self, split: Split) -> list[str]:
        """The names a ``label_subset`` file gives the images of ``split``, in dataset order:
        their indices here; a file dataset's file paths relative to the split's folder."""
        return [str(i) for i in range(len(self.labels(split)))]

    def pretrain_tensors(self) -> tuple[Tensor, Tensor]:
        """The whole pretraining split as one uint8 (N, 3, H, W) tensor and its labels (-1 where
        unlabeled), for ``augment_on_device`` (datasets held in memory implement it)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot hold its images on the device; set data.augment_on_device=false"
        )

    def labelled_indices(self) -> Tensor | None:
        """The ascending indices of the ``train`` split's images whose labels are used (see the
        class docstring), or None for all of them. ValueError for both options at once, for a
        subset file that names images the split does not hold (the first few named), or that
        names none."""
        if self.label_fraction is not None and self.label_subset is not None:
            raise ValueError("give one of data.label_fraction and data.label_subset, not both")
        if self.label_fraction is not None:
            return stratified_fraction(self.labels("train"), self.label_fraction, self.seed)
        if self.label_subset is None:
            return None
        return _named_indices(self.label_subset, self.image_names("train"))

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
        """Clean labelled train images (a kNN bank, cached linear features: the
        :meth:`labelled_indices`) and the test images: :meth:`eval_dataloader` of both splits."""
        bank = self.eval_dataloader("train", batch_size, self.labelled_indices())
        return bank, self.eval_dataloader("test", batch_size)


def _named_indices(path: str, names: list[str]) -> Tensor:
    """The ascending indices of the images a subset file at ``path`` lists (one per line, blank
    lines ignored), each matched to ``names`` whole or by its file name where that is one image's."""
    try:
        wanted = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    except OSError as error:
        raise FileNotFoundError(f"cannot read the label subset file {path} (data.label_subset): {error}") from None
    by_file: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_file.setdefault(name.replace(os.sep, "/").rsplit("/", 1)[-1], []).append(i)
    position = {file: found[0] for file, found in by_file.items() if len(found) == 1}
    position.update({name: i for i, name in enumerate(names)})
    unknown = [name for name in wanted if name not in position]
    if unknown:
        shared = [name for name in unknown if len(by_file.get(name, ())) > 1]
        raise ValueError(
            f"{len(unknown)} name(s) in {path} (data.label_subset) are not in the training split: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            + (f" ({len(shared)} of them the file name of several images: give <class>/<file>)" if shared else "")
            + "; list its file names or <class>/<file> paths, one per line"
        )
    if not wanted:
        raise ValueError(f"{path} (data.label_subset) names no image")
    return torch.tensor(sorted({position[name] for name in wanted}), dtype=torch.long)


def _plain(value):
    """A hyper-parameter as plain values (a checkpoint loads with ``weights_only=True``): recipes as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class LinearEvaluationData(ResumableDataModule):
    """A datamodule's images through the linear-evaluation protocol (``spectral-ssl linear``):
    augmented labelled train images (:meth:`SSLDataModule.linear_train_transform`; those of
    :meth:`SSLDataModule.labelled_indices`; shuffled per epoch, sharded under DDP, resumable) and
    the clean validation images (:meth:`SSLDataModule.eval_dataloader`). ``batch_size``: per device
    (default: the dataset's)."""

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
        indices = self.data.labelled_indices()
        if indices is not None:
            dataset = _Subset(dataset, indices)
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


class _Subset(Dataset):
    """The images of ``dataset`` at ``indices``, indexed by ``i`` or ``(i, seed)`` as the dataset is."""

    def __init__(self, dataset: Dataset, indices: Tensor) -> None:
        self.dataset, self.indices = dataset, indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.dataset[(self.indices[key[0]], *key[1:])]
        return self.dataset[self.indices[key]]

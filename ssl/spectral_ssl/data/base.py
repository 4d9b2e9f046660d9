"""What every datamodule shares: the pretraining view stream, the clean evaluation loaders and
the linear-evaluation loaders, built from one method a dataset implements (:meth:`dataset`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from ..seeding import mix_seeds
from .views import Augmentation, MultiView, ResumableLoader, SeededEpochSampler

log = logging.getLogger(__name__)
Split = Literal["pretrain", "train", "test"]


class Normalize:
    """uint8 image(s) -> float32 (x / 255 - mean) / std: the deterministic evaluation transform."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        return (image.float().div(255) - self.mean) / self.std


class Skipped:
    """Returned by a dataset in place of a sample it could not read (see :func:`collate_skipping`)."""

    def __init__(self, path: str) -> None:
        self.path = path


def collate_skipping(samples: list) -> tuple:
    """default_collate over the readable samples, plus the list of paths that were skipped:
    ``(data, labels, skipped_paths)``. The datamodule strips the third element before the batch
    reaches the model and counts it."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [s.path for s in samples if isinstance(s, Skipped)]
    data, labels = default_collate(good) if good else (None, None)
    return data, labels, skipped


class SSLDataModule(L.LightningDataModule):
    """Base of the datamodules. A dataset implements :meth:`dataset` (its images for a split with a
    transform) and sets ``num_classes``, ``mean``, ``std`` and ``image_size``.

    Pretraining batches are ``([view_0, ..., view_{V-1}], labels)``. ``augment`` is one recipe used
    for ``num_views`` views, or a list with one recipe per view (asymmetric views such as BYOL's, or
    multi-crop: 2 global + N small crops of other sizes, then ``num_views`` is ignored). The view
    stream depends only on (``seed``, epoch, image): see :class:`SeededEpochSampler`.
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
        augment: Augmentation | list[Augmentation] = Augmentation(),
        seed: int = 0,
        augment_on_device: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.num_views, self.seed = batch_size, num_workers, num_views, seed
        self.augment, self.augment_on_device = augment, augment_on_device
        self.skipped: list[str] = []

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

    def view_transforms(self) -> list[Callable]:
        return [recipe.build(self.mean, self.std) for recipe in self.view_recipes()]

    def eval_transform(self) -> Callable:
        return Normalize(self.mean, self.std)

    def linear_train_transform(self) -> Callable:
        """RandomResizedCrop + flip, nothing else: the linear-evaluation protocol's training view."""
        recipe = Augmentation(size=self.image_size, scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)
        return recipe.build(self.mean, self.std)

    # --- loaders -----------------------------------------------------------------------------
    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        collate_fn: Callable = collate_skipping,
    ) -> DataLoader:
        if drop_last:  # the pretraining loaders: every batch full
            self.check_batch_size(len(dataset))  # type: ignore[arg-type]
        trainer = self.trainer
        sampler = SeededEpochSampler(
            dataset,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
        )
        # the epoch Lightning is about to train: it sets it itself only after the first batches are drawn
        sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed if trainer else 0)
        return ResumableLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            pin_memory=torch.cuda.is_available(),
            position=self.training_position,
        )

    def training_position(self) -> tuple[int, int]:
        """(epoch, batches of it trained so far): where a checkpoint written now resumes."""
        trainer = self.trainer
        epoch, batches = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return (epoch + 1, 0) if batches >= trainer.num_training_batches else (epoch, batches)

    def train_dataloader(self) -> DataLoader:
        if self.augment_on_device:  # the loader yields image indices; the images wait on the device
            dataset: Dataset = _Indices(self.pretrain_tensors()[1])
        else:
            dataset = self.dataset("pretrain", MultiView(self.view_transforms()))
        return self._loader(dataset, self.batch_size, shuffle=True, drop_last=True)

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
        """``augment_on_device``: the training batch (indices) becomes V views made on the device,
        from the uint8 set kept there, with per-image random parameters (:class:`BatchAugmentation`).
        The generator is seeded by (seed, epoch, batch number), so a resumed run sees the same views."""
        trainer = self.trainer
        if not self.augment_on_device or trainer is None or not trainer.training:
            return batch
        data, labels = batch
        device = labels.device
        if getattr(self, "_device_views", None) is None or self._device_views[0].mean.device != device:
            from .device_augment import BatchAugmentation

            self._device_views = [BatchAugmentation(r, self.mean, self.std).to(device) for r in self.view_recipes()]
        images = self.device_images(data, device)
        epoch, batch_number = self.training_position()  # this batch's number: it is not counted yet
        seed = mix_seeds(self.seed, epoch, batch_number) % (2**63 - 1)
        generator, host_generator = torch.Generator(device).manual_seed(seed), torch.Generator().manual_seed(seed)
        return [augment(images, generator, host_generator) for augment in self._device_views], labels

    def device_images(self, indices: Tensor, device: torch.device) -> Tensor:
        """The images of a training batch on the device (here: picked from the resident set)."""
        if getattr(self, "_resident", None) is None or self._resident.device != device:
            self._resident = self.pretrain_tensors()[0].to(device)
        return self._resident[indices]

    def eval_dataloader(self, split: Split, batch_size: int = 512, indices: Tensor | None = None) -> DataLoader:
        """Clean (un-augmented, normalized) labelled images of ``split`` in dataset order, or only
        those at ``indices`` (ascending: files are then read in order). Not sharded:
        :func:`~spectral_ssl.evaluation.extract_features` shards under DDP."""
        self.setup("fit")
        dataset = self.dataset(split, self.eval_transform())
        if indices is not None:
            dataset = Subset(dataset, indices.tolist())
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers, collate_fn=collate_skipping)

    def knn_dataloaders(self, batch_size: int = 512) -> tuple[DataLoader, DataLoader]:
        """Clean labelled train images (a kNN bank, cached linear features) and the test images:
        :meth:`eval_dataloader` of both splits."""
        return self.eval_dataloader("train", batch_size), self.eval_dataloader("test", batch_size)

    def linear_dataloaders(self, batch_size: int = 256) -> tuple[DataLoader, DataLoader]:
        """The linear-evaluation protocol: augmented labelled train images (shuffled per epoch,
        sharded under DDP) and the clean test images."""
        self.setup("fit")
        train = self._loader(self.dataset("train", self.linear_train_transform()), batch_size, shuffle=True)
        return train, self.knn_dataloaders(batch_size)[1]

    # --- unreadable images -------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
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

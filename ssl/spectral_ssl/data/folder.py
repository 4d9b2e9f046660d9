"""ImageNet, ImageNet-100 and any ImageFolder tree of JPEG/PNG files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_dtype

from .base import Normalize, Split, SSLDataModule
from .cpu_augment import DecodeError
from .device_augment import DeviceViews
from .index import ImageIndex
from .loaders import Skipped
from .views import Augmentation, apply_seeded

log = logging.getLogger(__name__)
OnCorrupt = Literal["skip", "raise"]
JPEG = (".jpg", ".jpeg")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_AUGMENTATION = [  # BYOL / INTL: blur on view 0 always, solarize on view 1 only
    Augmentation(size=224, blur_p=1.0),
    Augmentation(size=224, blur_p=0.1, solarize_p=0.2),
]


class UnreadableImageError(RuntimeError):
    """An image file that cannot be decoded, with ``on_corrupt="raise"``."""


def _unreadable(path: str, error: Exception, on_corrupt: OnCorrupt) -> Skipped:
    """What happens to a file that cannot be read or decoded: an error naming it
    (``on_corrupt="raise"``), or a warning naming it and a :class:`Skipped` marker (``"skip"``)."""
    if on_corrupt == "raise":
        raise UnreadableImageError(
            f"cannot read image {path}: {error} (set data.on_corrupt=skip to skip unreadable files)"
        ) from error
    log.warning("skipping unreadable image %s: %s", path, error)
    return Skipped(path)


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    """8 bits a channel: 16-bit PNGs (uint16, 0..65535) scaled to 0..255 (x / 257, rounded), as
    every transform and the normalization expect."""
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


class ImageFileDataset(Dataset):
    """(path, label) samples decoded to uint8 RGB tensors, then ``transform``ed; indexable by ``i``
    or ``(i, seed)`` (the transform's randomness then comes from that seed: :func:`apply_seeded`;
    the views of :meth:`Augmentation.build` open a JPEG themselves, for one reduced decode). An
    unreadable file is logged with its path and returned as :class:`Skipped`
    (``on_corrupt="skip"``) or raises :class:`UnreadableImageError` naming it (``"raise"``)."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], transform: Callable | None = None, on_corrupt: OnCorrupt = "skip"
    ) -> None:
        self.samples, self.transform, self.on_corrupt = samples, transform, on_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        if getattr(self.transform, "takes_rng", False) and path.lower().endswith(JPEG):
            try:  # the views open the file themselves: one decode, reduced in size where every crop allows
                return apply_seeded(self.transform, path, seed), label
            except DecodeError as error:  # only the file's own errors; the augmentation's propagate
                return _unreadable(path, error, self.on_corrupt)
        try:
            image = as_uint8(decode_image(read_file(path), mode=ImageReadMode.RGB))
        except (RuntimeError, OSError, ValueError) as error:
            return _unreadable(path, error, self.on_corrupt)
        return apply_seeded(self.transform, image, seed), label


class EncodedImageDataset(Dataset):
    """(file bytes, label, path) of (path, label) samples, for decoding on the device; indexable
    by ``i`` or ``(i, seed)``. A file that cannot be read is handled as ``on_corrupt`` says."""

    def __init__(self, samples: Sequence[tuple[str, int]], on_corrupt: OnCorrupt = "skip") -> None:
        self.samples, self.on_corrupt = samples, on_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        path, label = self.samples[key[0] if isinstance(key, tuple) else key]
        try:
            # a copy: read_file's tensor maps the file, and a mapped storage cannot be sent from a
            # DataLoader worker (its file descriptor is gone: "Bad file descriptor")
            return read_file(path).clone(), label, path
        except (RuntimeError, OSError) as error:
            return _unreadable(path, error, self.on_corrupt)


def collate_encoded(samples: list) -> tuple:
    """((list of byte tensors, paths), labels, skipped paths): byte strings differ in length."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    data = ([s[0] for s in good], [s[2] for s in good])
    return (
        data,
        torch.tensor([s[1] for s in good], dtype=torch.long),
        [s.path for s in samples if isinstance(s, Skipped)],
    )


def decode_images(
    encoded: list[torch.Tensor], paths: list[str], device: torch.device, on_corrupt: OnCorrupt = "skip"
) -> tuple[list[torch.Tensor], list[int]]:
    """Decode file bytes to uint8 RGB images on ``device`` (nvJPEG on CUDA, one batched call;
    libjpeg-turbo on the CPU); files the batched JPEG decoder refuses (PNG, corrupt ones) are
    retried one by one. Returns the images and the positions that decoded."""
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)), list(range(len(encoded)))
    except RuntimeError:
        pass
    images, kept = [], []
    for i, (data, path) in enumerate(zip(encoded, paths)):
        try:
            images.append(as_uint8(decode_image(data, mode=ImageReadMode.RGB)).to(device))
            kept.append(i)
        except (RuntimeError, ValueError) as error:
            _unreadable(path, error, on_corrupt)
    return images, kept


class ImageFolderDataModule(SSLDataModule):
    """An ImageFolder tree: ``root/<train_dir>/<class>/<image>`` and ``root/<val_dir>/<class>/<image>``
    (ImageNet's usual layout after the validation images are sorted into class folders).
    ``classes``: use only these class folders (e.g. the ImageNet-100 list); by default all.
    The images of a class are the image files directly in its folder. The file list is an
    :class:`~spectral_ssl.data.index.ImageIndex` (numpy arrays, about 40 bytes an image), built
    once and cached in ``index_cache`` (``pretrain`` puts it in the run folder; None: rebuilt).
    Evaluation resizes to ``eval_resize`` then centre-crops ``image_size`` (256 -> 224).
    ``augment_on_device``: DataLoader workers only read the files; the JPEGs are decoded on the
    training device in one batched call (nvJPEG on a GPU) and the views made there
    (:class:`~spectral_ssl.data.device_augment.BatchAugmentation`). ``reduced_decode``: in DataLoader
    workers, a JPEG is decoded at a reduced size (libjpeg's DCT scaling) when every crop of it
    still holds twice its output size (False: always whole, as the official INTL code and
    solo-learn decode it; the crop is then exactly torchvision's).

    Its other options (batch size, workers, views, seed, labelled subset) are :class:`~.base.SSLDataModule`'s.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        classes: list[str] | None = None,
        image_size: int = 224,
        eval_resize: int = 256,
        augment: Augmentation | list[Augmentation] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_corrupt: OnCorrupt = "skip",
        index_cache: str | None = None,
        reduced_decode: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            augment=augment or IMAGENET_AUGMENTATION,
            **kwargs,
        )
        self.root, self.train_dir, self.val_dir, self.classes = Path(root), train_dir, val_dir, classes
        self.reduced_decode = reduced_decode
        self.index_cache = index_cache
        self.image_size, self.eval_resize, self.on_corrupt = image_size, eval_resize, on_corrupt
        self.mean, self.std = tuple(mean), tuple(std)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "samples"):
            return
        self.samples = {"train": self._scan(self.train_dir), "test": self._scan(self.val_dir)}
        self.num_classes = len(self.class_names)

    def labels(self, split: Split) -> torch.Tensor:
        self.setup()
        return torch.from_numpy(self.samples["train" if split == "pretrain" else split].labels.astype("int64"))

    def image_names(self, split: Split) -> list[str]:
        """The images' paths relative to the split's folder (``<class>/<file>``), in dataset order."""
        self.setup()
        return self.samples["train" if split == "pretrain" else split].relative_paths()

    def _scan(self, name: str) -> ImageIndex:
        folder = self.root / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no folder {folder}: an ImageFolder dataset needs "
                f"{self.root}/{self.train_dir}/<class>/<image>.JPEG and "
                f"{self.root}/{self.val_dir}/<class>/<image>.JPEG (set data.root, data.train_dir, data.val_dir)"
            )
        found, _ = find_classes(str(folder))
        names = self.classes or found
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise FileNotFoundError(f"class folder(s) {unknown[:5]} not in {folder}")
        if hasattr(self, "class_names") and names != self.class_names:
            raise ValueError(f"{folder} has other class folders than {self.root / self.train_dir}")
        self.class_names = list(names)
        samples = ImageIndex.cached(folder, names, self.index_cache)
        empty = sorted(set(names) - {names[label] for label in np.unique(samples.labels)})
        if empty:
            log.warning(
                "%d class folder(s) under %s hold no image and count as classes nobody sees: %s",
                len(empty),
                folder,
                ", ".join(empty[:5]),
            )
        if not len(samples):
            raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS[:4])} ...) under {folder}/<class>/")
        return samples

    def dataset(self, split: Split, transform: Callable | None) -> ImageFileDataset:
        self.setup()
        return ImageFileDataset(self.samples["train" if split == "pretrain" else split], transform, self.on_corrupt)

    def eval_transform(self) -> Callable:
        return v2.Compose(
            [
                v2.Resize(self.eval_resize, antialias=True),
                v2.CenterCrop(self.image_size),
                Normalize(self.mean, self.std),
            ]
        )

    def train_dataloader(self):
        if not self.augment_on_device:
            return super().train_dataloader()
        self.setup()  # set up already under a Trainer (idempotent), as dataset() does
        self.device_views = DeviceViews(self.view_recipes(), self.mean, self.std, self.seed)
        dataset = EncodedImageDataset(self.samples["train"], self.on_corrupt)
        self.check_batch_size(len(dataset))
        return self._training_loader(
            dataset, self.batch_size, self.num_workers, self.seed, drop_last=True, collate_fn=collate_encoded
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        data, labels = batch
        if not (self.augment_on_device and isinstance(data, tuple)):
            return batch
        (encoded, paths), device = data, self.trainer.strategy.root_device
        images, kept = decode_images(encoded, paths, device, self.on_corrupt)
        self.skipped += [paths[i] for i in sorted(set(range(len(paths))) - set(kept))]
        return images, labels[kept]

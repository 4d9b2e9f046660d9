"""Augmented views and their reproducible randomness.

The stream of training views depends only on (seed, epoch, sample index): the sampler draws the
shuffle order from (seed, epoch), and each sample's augmentation draws its parameters from its own
generator, seeded by them (:mod:`spectral_ssl.data.cpu_augment`).
A run resumed from a checkpoint, mid-epoch included (:class:`~.loaders.ResumableLoader`), therefore sees
exactly the data it would have seen, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..seeding import mix_seeds
from .cpu_augment import PILAugmentation, make_views


@dataclass(frozen=True)
class Augmentation:
    """The SSL augmentation recipe (SimCLR / BYOL family) for one view: :meth:`build` makes it in
    DataLoader workers (Pillow's kernels), :class:`~.device_augment.BatchAugmentation` on the device.

    RandomResizedCrop(size, scale, ``interpolation``) -> flip (p ``flip_p``) -> ColorJitter(brightness,
    contrast, saturation, hue) with p ``jitter_p`` -> grayscale (p ``grayscale_p``) -> Gaussian
    blur (p ``blur_p``, sigma 0.1-2) -> solarize at 128 (p ``solarize_p``) -> float, Normalize.

    ``interpolation``: the crop's resampling, ``bicubic`` (the SSL recipes') or ``bilinear``
    (torchvision's RandomResizedCrop default, the linear protocols'). ``blur_kernel``: ``pil``,
    Pillow's ``ImageFilter.GaussianBlur(radius=sigma)`` over the whole image, as the official INTL
    code, solo-learn and BYOL's PyTorch ports apply it; or ``torchvision``, torchvision's
    ``GaussianBlur`` with a kernel of 10% of the side (SimCLR's TensorFlow rule: 3 taps at 32 px,
    which barely blurs a CIFAR image at sigma 2). The flip commutes with the colour operations and
    the blur, so taking it right after the crop (the sources take it last) draws the same views.
    """

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    blur_kernel: Literal["torchvision", "pil"] = "torchvision"

    def build(self, mean: Sequence[float], std: Sequence[float], reduced_decode: bool = True) -> PILAugmentation:
        """This view in DataLoader workers: ``transform(image, rng)`` on Pillow's kernels with
        torchvision's distributions, parameters drawn from ``rng`` (:mod:`.cpu_augment`);
        ``reduced_decode``: a JPEG file may be decoded at a reduced size where its crops allow."""
        return PILAugmentation(self, mean, std, reduced_decode)


class MultiView:
    """Applies each of several transforms to the same image: one view per transform. Views of
    :meth:`Augmentation.build` share one generator and one (reduced) decode of a file."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)
        self.takes_rng = all(isinstance(t, PILAugmentation) for t in self.transforms)

    def __call__(self, image, rng: random.Random | None = None) -> list[Tensor]:
        if self.takes_rng:
            return make_views(self.transforms, image, rng)
        return [t(image) for t in self.transforms]


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor (N, C, H, W) with integer labels, transformed on access.

    Indexed by ``i`` or by ``(i, seed)``; with a seed the transform's randomness comes from it
    (:func:`apply_seeded`, :class:`SeededEpochSampler`), without one from the global RNG.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        return apply_seeded(self.transform, self.images[index], seed), int(self.labels[index])


def apply_seeded(transform: Callable | None, image, seed: int | None):
    """``transform(image)`` (the image itself when there is none), its randomness drawn from
    ``seed``: the views of :meth:`Augmentation.build` get their own ``random.Random(seed)``;
    any other transform runs under torch's RNG seeded so (the global RNG is left as it was). Without
    a seed, under the global RNG."""
    if transform is None:
        return image
    if seed is None:
        return transform(image)
    if getattr(transform, "takes_rng", False):
        return transform(image, random.Random(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


class SeededEpochSampler(DistributedSampler):
    """DistributedSampler yielding ``(index, seed)``: the order and each sample's augmentation
    seed depend only on (``seed``, epoch, index). Lightning calls ``set_epoch`` every epoch and,
    as this is a DistributedSampler, keeps it under DDP (each rank takes its own shard).
    ``start``: samples of this rank's shard to pass over in the next pass only (a resumed epoch)."""

    start: int = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        base = mix_seeds(self.seed, self.epoch) * 1_000_000_007  # a stride between epochs' per-image seeds
        start, self.start = self.start, 0
        for index in itertools.islice(super().__iter__(), start, None):
            yield index, (base + index) % (2**63 - 1)

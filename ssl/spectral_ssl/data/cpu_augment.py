"""The views made in DataLoader workers: the SSL augmentation recipe on Pillow's C kernels, with
every random parameter drawn from a per-image generator.

Why this and not ``torchvision.transforms.v2`` on uint8 tensors: on one image at a time, many
small torch ops cost more than Pillow's kernels (colour jitter 252 vs 150 us a view at 32 px,
the antialiased bicubic crop 62 vs 44 us), and reseeding torch's global generator around every
image (``fork_rng`` + ``manual_seed``, 0.35 ms an image) costs more than all of them. Here:

- **Randomness**: each image's parameters come from ``random.Random(seed)``, the per-image seed
  of :class:`~spectral_ssl.data.views.SeededEpochSampler` (a function of seed, epoch and index):
  no global state is touched, so the views depend only on (seed, epoch, index), whatever the
  workers. The distributions are torchvision's: RandomResizedCrop's 10 tries then the central
  fallback, ColorJitter's random order and uniform factors, each op's probability (tested
  against ``torchvision.transforms.v2``).
- **Kernels**: Pillow's, as torchvision applies them to PIL images: crop then bicubic resize
  (Pillow's own calls, equal to ``v2.functional.resized_crop`` on a PIL image), flip, and
  ``v2.functional``'s colour ops, grayscale and solarize on PIL images (ImageEnhance, the HSV hue
  shift, ``ImageOps.solarize``); the Gaussian blur is torchvision's kernel (10% of the side, as in
  the tensor path) computed as two banded matrix products.
- **Decoding**: given a file path, the image is opened with Pillow and, for a JPEG, decoded at a
  reduced size (``Image.draft``: libjpeg's DCT scaling by 1/2, 1/4, 1/8) when every view's crop
  holds at least twice its output size in pixels: all crops of an image are drawn before it is
  decoded, so one reduced decode serves every view (a 96 px view of a 1000 px photo from a crop
  of 400 px decodes a quarter of the side). A reduced decode resamples the crop box in the
  reduced image (``resize(box=)``), not an exact replay of torchvision's crop.

Output: float32 (3, size, size) tensors normalized by ``mean``/``std`` (given in [0, 1]).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms.v2 import functional as F

Box = tuple[float, float, float, float]  # left, top, width, height in the original image's pixels


def blur_kernel_size(image_size: int) -> int:
    """The Gaussian blur's kernel: about 10% of the image side, odd, at least 3 (SimCLR's rule)."""
    return max(2 * (image_size // 20) + 1, 3)


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random):
    """torchvision's RandomResizedCrop parameters (``v2.RandomResizedCrop.make_params``) drawn from
    ``rng``: up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect
    ratio in ``ratio``, else the central crop of the closest allowed ratio. Returns (left, top,
    w, h) in pixels."""
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class PILAugmentation:
    """One view of an :class:`~spectral_ssl.data.views.Augmentation` recipe on Pillow's kernels:
    ``view = PILAugmentation(recipe, mean, std)(image, rng)``, ``image`` a uint8 (3, H, W) tensor,
    a PIL image or a file path; ``rng`` a ``random.Random`` (None: one seeded from torch's global
    generator, so ``torch.manual_seed`` still fixes the views). ``reduced_decode=False``: a JPEG is
    always decoded whole, as torchvision's pipeline decodes it (the crop then exactly torchvision's)."""

    RATIO = (3 / 4, 4 / 3)
    takes_rng = True  # apply_seeded hands it a per-image generator

    def __init__(self, recipe, mean: Sequence[float], std: Sequence[float], reduced_decode: bool = True) -> None:
        self.recipe, self.reduced_decode = recipe, reduced_decode
        mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.scale, self.shift = 1 / (255 * std_t), -mean_t / std_t  # (x / 255 - mean) / std as x * a + b
        jitter = recipe.jitter
        # torchvision's ColorJitter ranges; a jitter of 0 is no op and draws no factor
        self.jitter_ranges = [((max(0.0, 1 - j), 1 + j) if j else None) for j in jitter[:3]]
        self.jitter_ranges.append((-jitter[3], jitter[3]) if jitter[3] else None)
        self.blur_kernel = blur_kernel_size(recipe.size)

    def crop(self, width: int, height: int, rng: random.Random) -> Box:
        return crop_box(width, height, self.recipe.scale, self.RATIO, rng)

    def finish(self, image: Image.Image, box: Box, rng: random.Random) -> Tensor:
        """The view from ``image`` (RGB, possibly decoded at a reduced size: ``box`` is scaled to it)."""
        recipe, size = self.recipe, self.recipe.size
        resample = Image.Resampling.BILINEAR if recipe.interpolation == "bilinear" else Image.Resampling.BICUBIC
        left, top, w, h = box
        if isinstance(left, int) and isinstance(w, int):  # pixel-aligned: exactly torchvision's crop + resize
            view = image.crop((left, top, left + w, top + h)).resize((size, size), resample)
        else:
            view = image.resize((size, size), resample, box=(left, top, left + w, top + h))
        if recipe.flip_p > 0 and rng.random() < recipe.flip_p:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if recipe.jitter_p > 0 and rng.random() < recipe.jitter_p:
            view = self._jitter(view, rng)
        if recipe.grayscale_p > 0 and rng.random() < recipe.grayscale_p:
            view = view.convert("L").convert("RGB")
        if recipe.blur_p > 0 and rng.random() < recipe.blur_p:
            sigma = rng.uniform(0.1, 2.0)
            if recipe.blur_kernel == "pil":
                view = view.filter(ImageFilter.GaussianBlur(radius=sigma))
            else:
                view = gaussian_blur(view, self.blur_kernel, sigma)
        if recipe.solarize_p > 0 and rng.random() < recipe.solarize_p:
            view = F.solarize(view, 128)
        pixels = torch.from_numpy(np.array(view)).permute(2, 0, 1)  # a writable copy (150 KB at 224 px)
        return torch.addcmul(self.shift, pixels, self.scale)

    def _jitter(self, view: Image.Image, rng: random.Random) -> Image.Image:
        """ColorJitter: the four adjustments in a random order, each with a uniform factor
        (torchvision draws the order first, then the four factors)."""
        order = rng.sample(range(4), 4)
        factors = [None if r is None else rng.uniform(*r) for r in self.jitter_ranges]
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for i in order:
            if factors[i] is not None:
                view = ops[i](view, factors[i])
        return view

    def __call__(self, image, rng: random.Random | None = None) -> Tensor:
        return make_views([self], image, rng)[0]


def gaussian_blur(image: Image.Image, kernel_size: int, sigma: float) -> Image.Image:
    """torchvision's Gaussian blur of a uint8 image (``v2.functional.gaussian_blur``: the kernel
    exp(-x^2 / 2 sigma^2) on ``kernel_size`` taps, normalized; reflect padding; rounded), computed
    as two 1-D passes, which the 2-D kernel (an outer product) equals, each pass one product with a
    banded matrix that holds the taps and the reflection (torchvision's own on a PIL image: 78 ms
    at 224 px, k = 23; this: about 2 ms). Results equal torchvision's but for a rounding at exactly
    .5 that the two summation orders can split (one grey level, rarely; tested)."""
    half = (kernel_size - 1) * 0.5
    taps = torch.exp(-0.5 * (torch.linspace(-half, half, kernel_size) / sigma).square())
    taps /= taps.sum()
    taps[taps < 1e-20] = 0  # no subnormal floats in the products (they cost 10x); 1e-20 x 255 rounds away
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().contiguous()  # (3, H, W)
    x = x @ _blur_matrix(taps, x.shape[2])  # along each row
    x = _blur_matrix(taps, x.shape[1]).T @ x  # along each column
    return Image.fromarray(x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())


def _blur_matrix(taps: Tensor, n: int) -> Tensor:
    """M (n x n) with (x @ M)[j] = sum_t taps[t] x[reflect(j + t - k // 2)]: a 1-D convolution with
    torch's "reflect" padding (index -1 reads 1, index n reads n - 2) as one matrix product."""
    k = len(taps)
    source = torch.arange(n).unsqueeze(1) + torch.arange(k) - k // 2  # (n, k): the index each tap reads
    source = source.abs()
    source = torch.where(source > n - 1, 2 * (n - 1) - source, source)
    matrix = torch.zeros(n, n)
    matrix.index_put_((source.flatten(), torch.arange(n).repeat_interleave(k)), taps.repeat(n), accumulate=True)
    return matrix


def global_rng() -> random.Random:
    """A generator seeded from torch's global one (for a view asked for without a seed)."""
    return random.Random(int(torch.randint(2**62, ())))


class DecodeError(OSError):
    """A file that Pillow cannot open or decode (corrupt, truncated, not an image, too large)."""


def make_views(augmentations: Sequence[PILAugmentation], image, rng: random.Random | None = None) -> list[Tensor]:
    """One view per augmentation of ``image``: a uint8 (3, H, W) tensor, a PIL image, or a file
    path (opened here and closed after). Every crop is drawn first from the image's size; a JPEG
    file is then decoded once, at the smallest DCT scale that leaves every crop at least its
    output size (whole when any augmentation has ``reduced_decode=False``). Raises
    :class:`DecodeError` for a file that cannot be opened or decoded (and nothing else: an error
    of the augmentation itself propagates as it is)."""
    rng = rng or global_rng()
    if isinstance(image, (str, Path)):
        try:
            opened = Image.open(image)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DecodeError(f"{image}: {error}") from error
        with opened:
            return _make_views(augmentations, opened, rng, from_file=True)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    return _make_views(augmentations, image, rng, from_file=False)


def _make_views(augmentations, pil: Image.Image, rng: random.Random, from_file: bool) -> list[Tensor]:
    """``from_file``: ``pil`` is opened, not yet loaded, so a JPEG can still be decoded reduced."""
    width, height = pil.size
    boxes = [a.crop(width, height, rng) for a in augmentations]
    scale = 1.0
    try:
        if from_file and pil.format in ("JPEG", "MPO") and all(a.reduced_decode for a in augmentations):
            shrink = min(min(box[2] / a.recipe.size, box[3] / a.recipe.size) for a, box in zip(augmentations, boxes))
            if shrink >= 2:
                drafted = pil.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
                if drafted is not None:  # libjpeg maps x -> x / s exactly: the box it reports is (0, 0, W/s, H/s)
                    scale = drafted[1][2] / width
        pil = pil.convert("RGB") if pil.mode != "RGB" else pil
        pil.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        if not from_file:
            raise
        raise DecodeError(f"{getattr(pil, 'filename', 'image')}: {error}") from error
    if scale != 1.0:  # decoded reduced: boxes in its pixels
        boxes = [(left * scale, top * scale, w * scale, h * scale) for left, top, w, h in boxes]
    return [a.finish(pil, box, rng) for a, box in zip(augmentations, boxes, strict=True)]

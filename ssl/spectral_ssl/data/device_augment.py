"""The SSL augmentation recipe applied to a whole batch at once, on whatever device the batch is
on (the GPU in training, the CPU in tests), with independent random parameters per image. The
batch is a uint8 tensor (in-memory datasets) or a list of images of different sizes (JPEGs
decoded on the device): only the crop then runs image by image.

It draws its parameters from the same distributions as :class:`~spectral_ssl.data.Augmentation`'s
torchvision pipeline (checked against torchvision's own parameter samplers in the tests):

- RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3), 10 tries,
  then the centre-crop fallback, as torchvision; the crop and the flip are one affine
  ``grid_sample`` (bilinear; unlike torchvision no antialiasing when a crop is shrunk a lot);
- ColorJitter with probability ``jitter_p``: brightness, contrast, saturation factors
  ~ U(1 - s, 1 + s), hue shift ~ U(-h, h), applied in a random order drawn once per batch
  (torchvision draws one per image; the distribution of every factor is the same);
- grayscale, Gaussian blur (sigma ~ U(0.1, 2), torchvision's kernel size and reflect padding; for a
  recipe with ``blur_kernel="pil"``, 13 taps, the Gaussian that Pillow's box-filter blur
  approximates, to +-3 sigma), solarization at 128/255, each with its own probability; then Normalize.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..seeding import mix_seeds
from .cpu_augment import blur_kernel_size
from .views import Augmentation

GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


def _per_image(value, n: int, device) -> Tensor:
    """A number or an (n,) tensor as an (n, 1) float tensor on ``device``, made there (a tensor
    built from Python values and copied would make the host wait for the device)."""
    if isinstance(value, Tensor):
        return value.to(device, torch.float32, non_blocking=True).expand(n)[:, None]
    return torch.full((n, 1), float(value), device=device)


def _uniform(low: float, high: float, n: int, generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def sample_crops(
    n: int,
    height,
    width,
    scale: tuple[float, float],
    generator=None,
    device="cpu",
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Tensor:
    """(n, 4) crop boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params;
    ``height`` and ``width`` are numbers or (n,) tensors (images of different sizes)."""
    height, width = _per_image(height, n, device), _per_image(width, n, device)
    target = height * width * _uniform(*scale, n * tries, generator, device).view(n, tries)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), n * tries, generator, device)).view(n, tries)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.float().argmax(1, keepdim=True)  # the first valid try (0 when none; replaced below)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], valid.any(1)
    height, width = height[:, 0], width[:, 0]
    # fallback: the largest centred crop with the aspect ratio clamped to ``ratio``
    in_ratio = width / height
    fw = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, generator=generator, device=device)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], 1)


def crop_resize_flip(images: Tensor, boxes: Tensor, flips: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Each image's box resampled to ``size`` x ``size`` (and mirrored where ``flips``), one affine
    grid_sample for the batch. ``images``: float (N, C, H, W)."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    # normalized coordinates (align_corners=False): x_in = centre + half-extent * x_out
    theta[:, 0, 0] = (w / width) * torch.where(flips, -1.0, 1.0)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)  # torchvision's rgb_to_grayscale


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1] (torchvision's _blend)."""
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6.0) % 1.0)
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack(
        [torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0
    )  # (6, N, 3, H, W)
    return choices.gather(0, i[None, :, None].expand(1, -1, 3, -1, -1))[0]


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    hsv = _rgb_to_hsv(images)
    hsv = torch.cat([(hsv[:, :1] + shift.view(-1, 1, 1, 1)) % 1.0, hsv[:, 1:]], 1)
    return _hsv_to_rgb(hsv)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-image separable Gaussian blur (reflect padding) as one grouped convolution."""
    n, c, height, width = images.shape
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, k)
    pad = kernel_size // 2
    out = F.pad(images.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    out = F.conv2d(out, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return out.view(n, c, height, width)


class BatchAugmentation(nn.Module):
    """One :class:`Augmentation` recipe for a batch of uint8 (N, 3, H, W) images on any device;
    returns the normalized float32 views (N, 3, size, size). See the module docstring."""

    def __init__(self, recipe: Augmentation, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.recipe = recipe
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # Pillow's blur (CPU) has no kernel size: here a Gaussian of +-3 sigma at the largest sigma, 2
        self.kernel_size = 13 if recipe.blur_kernel == "pil" else blur_kernel_size(recipe.size)

    def _mask(self, p: float, n: int, generator, device) -> Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    def forward(
        self,
        images: Tensor | list[Tensor],
        generator: torch.Generator | None = None,
        host_generator: torch.Generator | None = None,
    ) -> Tensor:
        """``images``: a uint8 (N, 3, H, W) batch, or a list of uint8 (3, H_i, W_i) images of
        different sizes (decoded JPEGs), all on one device. ``generator`` (on that device) draws
        the per-image parameters; ``host_generator`` (a CPU generator; default: ``generator`` when
        that is one) the few choices Python must see, so that nothing waits for the device."""
        r = self.recipe
        if isinstance(images, Tensor):
            device, n = images.device, images.shape[0]
            boxes = sample_crops(n, images.shape[2], images.shape[3], r.scale, generator, device)
            flips = self._mask(r.flip_p, n, generator, device)
            x = crop_resize_flip(images.float().div(255), boxes, flips, r.size)
        else:
            device, n = images[0].device, len(images)
            sizes = torch.tensor([image.shape[1:] for image in images])
            if device.type == "cuda":  # a copy from pageable memory would wait for the device's queue
                sizes = sizes.pin_memory()
            sizes = sizes.to(device, non_blocking=True)
            boxes = sample_crops(n, sizes[:, 0], sizes[:, 1], r.scale, generator, device)
            flips = self._mask(r.flip_p, n, generator, device)
            x = torch.cat(
                [
                    crop_resize_flip(image[None].float().div(255), boxes[i : i + 1], flips[i : i + 1], r.size)
                    for i, image in enumerate(images)
                ]
            )
        x = x.clamp(0, 1)
        if r.jitter_p > 0:
            host = (
                host_generator
                if host_generator is not None
                else (generator if generator is not None and generator.device.type == "cpu" else None)
            )
            apply = self._mask(r.jitter_p, n, generator, device)
            factors = self.jitter_factors(n, generator, device)
            x = self.color_jitter(x, apply, factors, torch.randperm(4, generator=host).tolist())
        if r.grayscale_p > 0:
            gray = self._mask(r.grayscale_p, n, generator, device).view(-1, 1, 1, 1)
            x = torch.where(gray, _gray(x).expand_as(x), x)
        if r.blur_p > 0:
            sigma = _uniform(0.1, 2.0, n, generator, device)
            blur = self._mask(r.blur_p, n, generator, device).view(-1, 1, 1, 1)
            x = torch.where(blur, gaussian_blur(x, sigma, self.kernel_size), x)
        if r.solarize_p > 0:
            solarize = self._mask(r.solarize_p, n, generator, device).view(-1, 1, 1, 1)
            x = torch.where(solarize & (x >= 128 / 255), 1 - x, x)
        return (x - self.mean) / self.std

    def jitter_factors(self, n: int, generator, device) -> dict[str, Tensor]:
        """Per-image colour-jitter factors, uniform in torchvision's ranges, drawn from ``generator``."""
        brightness, contrast, saturation, hue = self.recipe.jitter
        return {
            "brightness": _uniform(1 - brightness, 1 + brightness, n, generator, device),
            "contrast": _uniform(1 - contrast, 1 + contrast, n, generator, device),
            "saturation": _uniform(1 - saturation, 1 + saturation, n, generator, device),
            "hue": _uniform(-hue, hue, n, generator, device),
        }

    def color_jitter(self, x: Tensor, apply: Tensor, factors: dict[str, Tensor], order: list[int]) -> Tensor:
        """torchvision's ColorJitter with per-image ``factors`` on the images where ``apply``, the
        four operations in ``order`` (one order per batch, drawn on the host)."""
        brightness, contrast, saturation, hue = self.recipe.jitter
        out = x
        names = ["brightness", "contrast", "saturation", "hue"]
        for name in (names[i] for i in order):
            f = factors[name]
            if name == "brightness" and brightness:
                out = _blend(out, torch.zeros_like(out), f)
            elif name == "contrast" and contrast:
                out = _blend(out, _gray(out).mean((1, 2, 3), keepdim=True).expand_as(out), f)
            elif name == "saturation" and saturation:
                out = _blend(out, _gray(out).expand_as(out), f)
            elif name == "hue" and hue:
                out = adjust_hue(out, f)
        return torch.where(apply.view(-1, 1, 1, 1), out, x)


class DeviceViews:
    """The training views of ``augment_on_device``: one :class:`BatchAugmentation` per recipe,
    moved to the training device with the batch, drawing from a generator seeded by (``seed``,
    epoch, batch number, rank), so a resumed run sees the same views and every process of a
    distributed run draws its own (the batch number alone is the same on every rank). ``resident``: the whole
    pretraining set as uint8 (N, 3, H, W), moved to the device at the first batch, when the
    batches carry image indices; None when they carry the images (decoded JPEGs)."""

    def __init__(
        self,
        recipes: Sequence[Augmentation],
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        resident: Tensor | None = None,
    ) -> None:
        self.augmentations = nn.ModuleList(BatchAugmentation(recipe, mean, std) for recipe in recipes)
        self.seed, self.resident = seed, resident

    def __call__(
        self, data: Tensor | list[Tensor], device: torch.device, epoch: int, batch: int, rank: int = 0
    ) -> list[Tensor]:
        """The views (V tensors (N, 3, size, size)) of batch ``batch`` of ``epoch`` on process
        ``rank`` (the global rank: unique over devices and nodes): ``data`` are the indices into
        :attr:`resident`, or the images themselves."""
        self.augmentations.to(device)
        if self.resident is not None:
            if self.resident.device != device:
                self.resident = self.resident.to(device)
            data = self.resident[data]
        seed = mix_seeds(self.seed, epoch, batch, rank) % (2**63 - 1)
        generator, host_generator = torch.Generator(device).manual_seed(seed), torch.Generator().manual_seed(seed)
        return [augment(data, generator, host_generator) for augment in self.augmentations]

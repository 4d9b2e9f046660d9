"""The views made in loader workers (Pillow's kernels, per-image generators): torchvision's
distributions and torchvision's operations, one reduced JPEG decode, and a stream that depends
only on the per-image seed."""

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from PIL.JpegImagePlugin import JpegImageFile
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from spectral_ssl.data import Augmentation
from spectral_ssl.data.cpu_augment import (
    DecodeError,
    PILAugmentation,
    blur_kernel_size,
    crop_box,
    gaussian_blur,
    make_views,
)


def ks_statistic(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov distance (scipy's)."""
    return stats.ks_2samp(a, b).statistic


MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (40, 100, (0.2, 1.0)), (375, 500, (0.08, 1))])
def test_crop_boxes_follow_torchvisions_distribution(height, width, scale):
    n = 4000
    rng = random.Random(1)
    ours = np.array([crop_box(width, height, scale, (3 / 4, 4 / 3), rng) for _ in range(n)], dtype=np.float64)
    crop, image = v2.RandomResizedCrop(16, scale=scale), torch.zeros(3, height, width)
    torch.manual_seed(0)
    reference = []
    for _ in range(n):
        p = v2.RandomResizedCrop.make_params(crop, [image])
        reference.append((p["left"], p["top"], p["width"], p["height"]))
    reference = np.array(reference, dtype=np.float64)
    for column, name in enumerate(("left", "top", "width", "height")):
        assert ks_statistic(ours[:, column], reference[:, column]) < 0.04, name
    assert ks_statistic(ours[:, 2] * ours[:, 3], reference[:, 2] * reference[:, 3]) < 0.04
    assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()


def test_fallback_is_torchvisions_central_crop():
    never = (2.0, 3.0)  # an area fraction above 1: every try fails
    for width, height in ((100, 20), (20, 100), (50, 50)):
        torch.manual_seed(0)
        p = v2.RandomResizedCrop.make_params(v2.RandomResizedCrop(8, scale=never), [torch.zeros(3, height, width)])
        assert crop_box(width, height, never, (3 / 4, 4 / 3), random.Random(0)) == (
            p["left"],
            p["top"],
            p["width"],
            p["height"],
        )


def expected_view(recipe: Augmentation, image: Image.Image, seed: int) -> torch.Tensor:
    """The view written out with torchvision's v2 functional ops on the PIL image, the parameters
    drawn from the same generator in torchvision's order (a jitter of 0 draws no factor)."""
    rng, size = random.Random(seed), recipe.size
    left, top, w, h = crop_box(*image.size, recipe.scale, (3 / 4, 4 / 3), rng)
    mode = v2.InterpolationMode.BILINEAR if recipe.interpolation == "bilinear" else v2.InterpolationMode.BICUBIC
    view = TF.resized_crop(image, top, left, h, w, [size, size], mode, antialias=True)
    if recipe.flip_p > 0 and rng.random() < recipe.flip_p:  # an op of p = 0 is not in the pipeline
        view = TF.horizontal_flip(view)
    if recipe.jitter_p > 0 and rng.random() < recipe.jitter_p:
        order = rng.sample(range(4), 4)
        ranges = [(max(0, 1 - j), 1 + j) for j in recipe.jitter[:3]] + [(-recipe.jitter[3], recipe.jitter[3])]
        factors = [rng.uniform(*r) if r[0] != r[1] else None for r in ranges]
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        for i in order:
            if factors[i] is not None:
                view = ops[i](view, factors[i])
    if recipe.grayscale_p > 0 and rng.random() < recipe.grayscale_p:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if recipe.blur_p > 0 and rng.random() < recipe.blur_p:
        sigma = rng.uniform(0.1, 2.0)
        if recipe.blur_kernel == "pil":  # the official INTL code's and solo-learn's GaussianBlur
            view = view.filter(ImageFilter.GaussianBlur(radius=sigma))
        else:
            view = TF.gaussian_blur(view, [blur_kernel_size(size)] * 2, [sigma, sigma])
    if recipe.solarize_p > 0 and rng.random() < recipe.solarize_p:
        view = TF.solarize(view, 128)
    tensor = TF.to_dtype(TF.pil_to_tensor(view), torch.float32, scale=True)
    return TF.normalize(tensor, list(MEAN), list(STD))


@pytest.mark.parametrize(
    "recipe",
    [
        Augmentation(size=32),
        Augmentation(size=32, solarize_p=0.5, grayscale_p=0.5, flip_p=0.5, jitter_p=0.5),
        Augmentation(size=24, blur_p=0.5, solarize_p=0.3),
        Augmentation(size=16, scale=(0.4, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0),  # digits
        Augmentation(size=32, blur_p=0.5, blur_kernel="pil", jitter=(0.8, 0.8, 0.8, 0.2)),  # solo-learn's SimCLR
        Augmentation(size=24, jitter_p=0.0, grayscale_p=0.0, interpolation="bilinear"),  # the linear protocol
    ],
)
def test_views_equal_torchvisions_operations(recipe):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    augmentation = PILAugmentation(recipe, MEAN, STD)
    # the blur: torchvision's up to a rounding at .5 (one grey level, normalized: 1 / (255 std)); Pillow's exactly
    atol = 1.01 / (255 * min(STD)) if recipe.blur_p and recipe.blur_kernel == "torchvision" else 1e-5
    for seed in range(40):  # every branch taken and skipped (p = 0.5 over 40 seeds)
        ours = augmentation(image, random.Random(seed))
        torch.testing.assert_close(ours, expected_view(recipe, image, seed), rtol=0, atol=atol)
    # a uint8 tensor (the in-memory sets) is the same image
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    torch.testing.assert_close(augmentation(tensor, random.Random(3)), augmentation(image, random.Random(3)))


@pytest.mark.parametrize("size, kernel", [(224, 23), (96, 9), (32, 3)])
def test_separable_blur_is_torchvisions(size, kernel):
    image = Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size + 8, 3), dtype=np.uint8))
    for sigma in (0.1, 0.7, 2.0):
        ours = np.asarray(gaussian_blur(image, kernel, sigma), dtype=np.int16)
        reference = np.asarray(TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma]), dtype=np.int16)
        assert np.abs(ours - reference).max() <= 1 and (ours != reference).mean() < 1e-3


def test_views_depend_only_on_the_seed():
    augmentation = PILAugmentation(Augmentation(size=16), MEAN, STD)
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(1)
    first = make_views([augmentation] * 2, image, random.Random(7))
    torch.manual_seed(2)  # torch's global generator plays no part
    again = make_views([augmentation] * 2, image, random.Random(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], make_views([augmentation] * 2, image, random.Random(8))[0])
    torch.manual_seed(5)  # without a generator: one seeded from torch's, so manual_seed fixes it
    a = augmentation(image)
    torch.manual_seed(5)
    assert torch.equal(a, augmentation(image))


def smooth_jpeg_and_drafts(tmp_path, monkeypatch, seed: int) -> tuple:
    """A smooth 512 x 384 JPEG, and the list of the sizes Pillow's reduced decode (``draft``) is asked for."""
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    path = tmp_path / "photo.JPEG"
    Image.fromarray(pixels).resize((512, 384), Image.Resampling.BILINEAR).save(path, quality=95)
    drafts = []
    real_draft = JpegImageFile.draft
    monkeypatch.setattr(
        JpegImageFile, "draft", lambda self, mode, size: drafts.append(size) or real_draft(self, mode, size)
    )
    return path, drafts


def test_a_jpeg_is_decoded_once_at_reduced_size_when_every_crop_allows(tmp_path, monkeypatch):
    path, drafts = smooth_jpeg_and_drafts(tmp_path, monkeypatch, seed=0)
    small = PILAugmentation(Augmentation(size=32, scale=(0.5, 1.0), jitter_p=0, grayscale_p=0, flip_p=0), MEAN, STD)
    reduced = make_views([small, small], str(path), random.Random(0))
    assert len(drafts) == 1  # one decode for both views, at a reduced size
    full = make_views([small, small], Image.open(path).convert("RGB"), random.Random(0))
    for a, b in zip(reduced, full, strict=True):
        assert a.shape == b.shape == (3, 32, 32)
        assert (a - b).abs().mean() < 0.1  # the same content (normalized units; a smooth image)
    drafts.clear()
    large = PILAugmentation(Augmentation(size=224, scale=(0.9, 1.0)), MEAN, STD)
    make_views([large], str(path), random.Random(0))
    assert drafts == []  # a crop near the full image at 224 px: no reduction possible


def test_without_reduced_decode_a_jpeg_is_decoded_whole_and_cropped_as_torchvision(tmp_path, monkeypatch):
    """``reduced_decode=False`` (the ImageNet configs, as their sources decode): no draft, the view
    exactly torchvision's from the whole image."""
    path, drafts = smooth_jpeg_and_drafts(tmp_path, monkeypatch, seed=1)
    recipe = Augmentation(size=32, scale=(0.5, 1.0), jitter_p=0, grayscale_p=0, flip_p=0)
    whole = PILAugmentation(recipe, MEAN, STD, reduced_decode=False)
    (view,) = make_views([whole], str(path), random.Random(4))
    assert drafts == []
    torch.testing.assert_close(view, expected_view(recipe, Image.open(path).convert("RGB"), 4), rtol=0, atol=1e-5)


def test_a_corrupt_file_is_a_decode_error_and_an_augmentation_error_is_not_swallowed(tmp_path, monkeypatch):
    from spectral_ssl.data.folder import ImageFileDataset
    from spectral_ssl.data.views import MultiView

    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "good.JPEG"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(good)
    transform = MultiView([PILAugmentation(Augmentation(size=16), MEAN, STD)] * 2)
    dataset = ImageFileDataset([(str(path), 0), (str(good), 1)], transform, on_corrupt="skip")
    assert type(dataset[(0, 5)]).__name__ == "Skipped"  # the file's error: skipped, as on_corrupt says
    assert len(dataset[(1, 5)][0]) == 2
    monkeypatch.setattr(PILAugmentation, "finish", lambda *_: (_ for _ in ()).throw(ValueError("a bug in a view")))
    with pytest.raises(ValueError, match="a bug in a view"):  # not taken for an unreadable file
        dataset[(1, 5)]
    with pytest.raises(DecodeError):
        make_views([PILAugmentation(Augmentation(size=16), MEAN, STD)], str(path), random.Random(0))

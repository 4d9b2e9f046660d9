"""The batched (GPU) augmentation, run on the CPU: same distributions and same operations as the
torchvision pipeline of the CPU path."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from spectral_ssl.data import Augmentation, DigitsDataModule
from spectral_ssl.data.device_augment import (
    BatchAugmentation,
    adjust_hue,
    crop_resize_flip,
    gaussian_blur,
    sample_crops,
)


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov distance between empirical CDFs."""
    a, b = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([a, b])
    return np.abs(
        np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    ).max()


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.08, 1.0)), (40, 100, (0.2, 1.0))])
def test_crop_parameters_follow_torchvisions_distribution(height, width, scale):
    n = 4000
    torch.manual_seed(0)
    ours = sample_crops(n, height, width, scale, torch.Generator().manual_seed(1)).double()
    crop = v2.RandomResizedCrop(16, scale=scale)
    image = torch.zeros(3, height, width)
    reference = []
    for _ in range(n):
        params = v2.RandomResizedCrop.make_params(crop, [image])
        reference.append((params["top"], params["left"], params["height"], params["width"]))
    reference = torch.tensor(reference, dtype=torch.float64)
    for column, name in ((2, "height"), (3, "width")):
        assert ks_statistic(ours[:, column], reference[:, column]) < 0.04, name
    area = lambda boxes: boxes[:, 2] * boxes[:, 3]  # noqa: E731  (pixels: exact in both)
    assert ks_statistic(area(ours), area(reference)) < 0.04
    assert ks_statistic(ours[:, 0] / (height - ours[:, 2] + 1), reference[:, 0] / (height - reference[:, 2] + 1)) < 0.04
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def test_crop_resize_flip_is_exact_on_pixel_aligned_boxes():
    images = torch.rand(3, 3, 12, 16)
    no_flip, flip = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    torch.testing.assert_close(
        crop_resize_flip(images[:, :, :, 2:14], torch.tensor([[0.0, 0, 12, 12]] * 3), no_flip, 12),
        images[:, :, :, 2:14],
    )
    box = torch.tensor([[2, 4, 8, 8]] * 3, dtype=torch.float32)  # top 2, left 4, 8 x 8
    torch.testing.assert_close(crop_resize_flip(images, box, no_flip, 8), images[:, :, 2:10, 4:12])
    torch.testing.assert_close(crop_resize_flip(images, box, flip, 8), images[:, :, 2:10, 4:12].flip(-1))
    # a resize agrees with torchvision's bilinear resize (no antialias) of the crop
    resized = crop_resize_flip(images, box, no_flip, 5)
    torch.testing.assert_close(resized, TF.resize(images[:, :, 2:10, 4:12], [5, 5], antialias=False), atol=1e-5, rtol=0)


def test_colour_operations_equal_torchvisions():
    x = torch.rand(4, 3, 10, 10)
    factors = torch.tensor([0.6, 0.9, 1.2, 1.4])
    aug = BatchAugmentation(Augmentation(size=10), [0.0] * 3, [1.0] * 3)
    for name, reference in (
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
    ):
        ours = torch.stack([aug_one(aug, name, x[i : i + 1], factors[i : i + 1])[0] for i in range(4)])
        theirs = torch.stack([reference(x[i], float(factors[i])) for i in range(4)])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)
    shifts = torch.tensor([-0.1, -0.03, 0.05, 0.1])
    torch.testing.assert_close(
        adjust_hue(x, shifts), torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(4)]), atol=1e-5, rtol=0
    )


def aug_one(aug, name, x, factor):
    """One colour operation alone, through BatchAugmentation's own code path."""
    from spectral_ssl.data import device_augment as d

    if name == "brightness":
        return d._blend(x, torch.zeros_like(x), factor)
    if name == "contrast":
        return d._blend(x, d._gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), factor)
    return d._blend(x, d._gray(x).expand_as(x), factor)


def test_gaussian_blur_equals_torchvisions_per_image_sigma():
    x = torch.rand(3, 3, 20, 20)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    ours = gaussian_blur(x, sigma, 5)
    for i in range(3):
        torch.testing.assert_close(ours[i], TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2), atol=1e-5, rtol=0)


def test_probabilities_and_factor_ranges_match_the_recipe():
    recipe = Augmentation(size=16, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2, solarize_p=0.0)
    aug = BatchAugmentation(recipe, [0.0] * 3, [1.0] * 3)
    images = torch.randint(0, 256, (4000, 3, 16, 16), dtype=torch.uint8)
    out = aug(images, torch.Generator().manual_seed(0))
    assert out.shape == (4000, 3, 16, 16)
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    f = aug.jitter_factors(4000, torch.Generator().manual_seed(1), "cpu")  # the draw forward makes
    for name, s in (("brightness", 0.4), ("contrast", 0.4), ("saturation", 0.2)):
        assert ks_statistic(f[name].numpy(), np.random.default_rng(0).uniform(1 - s, 1 + s, 4000)) < 0.04
    assert ks_statistic(f["hue"].numpy(), np.random.default_rng(0).uniform(-0.1, 0.1, 4000)) < 0.04


def test_jitter_order_is_drawn_on_the_host():
    """The one choice Python must see (the order of the four colour jitters) comes from the host
    generator, so on a GPU making views never waits for the device; the per-image parameters come
    from the device generator alone."""
    augment = BatchAugmentation(
        Augmentation(size=16, jitter_p=1.0, grayscale_p=0.0, flip_p=0.0), (0.5,) * 3, (0.25,) * 3
    )
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def views(host_seed):
        device_generator = torch.Generator().manual_seed(0)
        out = augment(images, device_generator, torch.Generator().manual_seed(host_seed))
        order = torch.randperm(4, generator=torch.Generator().manual_seed(host_seed)).tolist()
        return out, order, device_generator.get_state()

    (first, order_1, drawn_1), (again, _, _), (other, order_2, drawn_2) = views(1), views(1), views(2)
    assert order_1 != order_2  # these two seeds give different orders
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(drawn_1, drawn_2)  # the device generator made the same draws whatever the host order


def test_device_path_trains_deterministically_on_the_cpu():
    from lightning import Trainer

    from spectral_ssl.methods import INTL
    from spectral_ssl.models import BackboneConfig

    def run():
        torch.manual_seed(0)
        model = INTL(backbone=BackboneConfig(cifar_stem=True, width=4), projector_dims=[32, 32], trace_weight=0.05)
        data = DigitsDataModule(batch_size=64, augment_on_device=True)
        Trainer(
            max_epochs=1,
            limit_train_batches=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[],
        ).fit(model, datamodule=data)
        return torch.cat([p.flatten() for p in model.parameters()])

    first = run()
    assert torch.isfinite(first).all()
    assert torch.equal(first, run())
    assert math.isfinite(float(first.sum()))


def test_image_folder_decodes_on_the_device_and_skips_a_corrupt_file(tmp_path, caplog):
    """Workers read bytes; decoding (batched, libjpeg-turbo here, nvJPEG on a GPU) and the views
    happen on the training device; the corrupt file is dropped with its label and counted. Two
    real worker processes: the file bytes must cross the process boundary."""
    from lightning import Trainer

    from spectral_ssl.data import ImageFolderDataModule, SkippedImagesReport
    from spectral_ssl.data.synthetic import write_image_folder
    from spectral_ssl.methods import INTL
    from spectral_ssl.models import BackboneConfig

    write_image_folder(tmp_path, per_class=4)  # 8 JPEGs + 1 corrupt in train/
    data = ImageFolderDataModule(
        root=str(tmp_path),
        augment=Augmentation(size=24, blur_p=0.5, solarize_p=0.2),
        batch_size=9,
        num_workers=2,
        augment_on_device=True,
        image_size=24,
        eval_resize=28,
    )
    model = INTL(backbone=BackboneConfig(cifar_stem=True, width=4), projector_dims=[16, 16], trace_weight=0.05)
    seen = []
    model.on_train_batch_start = lambda batch, batch_idx: seen.append(batch)
    with caplog.at_level("WARNING"):
        Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[SkippedImagesReport()],
        ).fit(model, datamodule=data)
    ((views, labels),) = seen
    assert [v.shape for v in views] == [(8, 3, 24, 24)] * 2 and labels.tolist().count(1) == 4
    assert "skipped 1 unreadable image(s), e.g. " in caplog.text and "broken.JPEG" in caplog.text  # epoch's end

"""The built-in dataset: scikit-learn's bundled handwritten digits (no download)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tensor_sets import TensorSetDataModule
from .views import Augmentation

DIGITS_AUGMENTATION = Augmentation(
    size=16, scale=(0.4, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=0.8, grayscale_p=0.0
)


class DigitsDataModule(TensorSetDataModule):
    """scikit-learn's digits: 1797 real 8x8 grey images of 10 classes (UCI optdigits test set).

    Held in memory like CIFAR (:class:`~spectral_ssl.data.tensor_sets.TensorSetDataModule`). A
    fixed, stratified, seeded split holds out ``test_size`` images (360 by default). Images are
    scaled from 0..16 to uint8, upsampled to ``image_size`` (bilinear) and repeated to 3 channels,
    so every backbone sees ordinary RGB tensors.

    ``num_workers`` is 0 by default: 1,797 tiny images in memory, where a worker process costs
    more than it saves. Its other options (batch size, views, seed, labelled subset) are
    :class:`~.base.SSLDataModule`'s.
    """

    def __init__(
        self,
        num_workers: int = 0,
        test_size: int = 360,
        image_size: int = 16,
        augment: Augmentation | list[Augmentation] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            num_workers=num_workers,
            augment=augment or DIGITS_AUGMENTATION,
            **kwargs,
        )
        self.test_size, self.image_size = test_size, image_size
        self.num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        images = images.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(digits.target)
        train, test = train_test_split(
            torch.arange(len(labels)).numpy(), test_size=self.test_size, random_state=self.seed, stratify=labels.numpy()
        )
        self.splits = {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
        pixels = self.splits["train"][0].float().div(255)
        self.mean, self.std = [pixels.mean().item()] * 3, [pixels.std().item()] * 3

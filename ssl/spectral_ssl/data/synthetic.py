"""Small datasets of random pixels in the real on-disk formats, for tests, benchmarks and a
first smoke run: torchvision's CIFAR python folder and an ImageFolder tree of JPEG files."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar_folder(
    root: str | Path, train_images: int = 30, test_images: int = 6, num_classes: int = 10, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """torchvision's ``cifar-10-batches-py`` (five training batches and ``test_batch``) or, for
    100 classes, ``cifar-100-python`` (``train``, ``test``) under ``root``: uint8 rows of 3,072
    (the red plane first) and their labels. Returns {file name: (pixels, labels)}."""
    rng = np.random.default_rng(seed)
    cifar10 = num_classes == 10
    folder = Path(root) / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True)
    counts = {f"data_batch_{i}": train_images // 5 for i in range(1, 6)} if cifar10 else {"train": train_images}
    counts["test_batch" if cifar10 else "test"] = test_images
    written = {}
    for name, count in counts.items():
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, count).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"data": data, "labels" if cifar10 else "fine_labels": labels, "filenames": ["x.png"] * count}, f
            )
        written[name] = (data, labels)
    return written


def write_image_folder(
    root: str | Path,
    per_class: int = 3,
    size: tuple[int, int] = (40, 48),
    classes: Sequence[str] = ("cat", "dog"),
    corrupt: bool = True,
    seed: int = 0,
) -> None:
    """``root/{train,val}/<class>/<i>.JPEG`` with ``per_class`` random images of ``size`` (H, W)
    per class, and with ``corrupt`` one file that is not a JPEG: ``train/<last class>/broken.JPEG``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=95)
    if corrupt:
        (root / "train" / classes[-1] / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

"""Small datasets of random pixels in the real on-disk formats, for tests, benchmarks and a
first smoke run: torchvision's CIFAR python folder, the MNIST family's IDX files and an ImageFolder
tree of JPEG files."""

from __future__ import annotations

import gzip
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


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8, 1 or 3 dimensions) in the IDX format: magic 0x0000080<ndim>, the dimensions
    as big-endian int32, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_folder(
    folder: str | Path,
    train_images: int = 40,
    test_images: int = 10,
    num_classes: int = 10,
    gzipped: bool = False,
    prefix: tuple[str, str] = ("train", "t10k"),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The MNIST family's four IDX files in ``folder``: ``<train|t10k>-images-idx3-ubyte`` (28 x 28
    images) and ``-labels-idx1-ubyte``, ``.gz`` when ``gzipped`` (EMNIST: ``prefix`` =
    ("emnist-<split>-train", "emnist-<split>-test")). Returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, name, count in (("train", prefix[0], train_images), ("test", prefix[1], test_images)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, num_classes, count).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            path = folder / f"{name}-{kind}-ubyte"
            if gzipped:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
        written[split] = (images, labels)
    return written

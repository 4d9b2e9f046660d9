"""The MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST) from their IDX files.

The IDX format (LeCun et al.): a big-endian header, ``0x00 0x00 <type> <dims>`` (type 0x08:
unsigned bytes; so images are magic 2051 with 3 dimensions N, H, W and labels 2049 with one, N),
one big-endian int32 per dimension, then the data, row-major. :func:`read_idx` reads one file,
gzipped or not, and refuses a wrong magic number, a truncated file or trailing bytes, naming the
file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .tensor_sets import TensorSetDataModule
from .views import Augmentation

IMAGES, LABELS = 2051, 2049  # the IDX magic numbers of uint8 arrays with 3 and 1 dimensions

Variant = Literal[
    "mnist",
    "fashion_mnist",
    "kmnist",
    "emnist_balanced",
    "emnist_byclass",
    "emnist_bymerge",
    "emnist_digits",
    "emnist_letters",
    "emnist_mnist",
]
FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
"""torchvision's folder of each variant (``<root>/<folder>/raw/``); EMNIST's is ``EMNIST``."""

CLASSES = {
    "mnist": 10,
    "fashion_mnist": 10,
    "kmnist": 10,
    "emnist_balanced": 47,
    "emnist_byclass": 62,
    "emnist_bymerge": 47,
    "emnist_digits": 10,
    "emnist_letters": 27,  # labelled 1..26, as torchvision's EMNIST keeps them (class 0: N/A)
    "emnist_mnist": 10,
}

MNIST_AUGMENTATION = [  # for 28 px grey images: the crop from 0.2 (a 0.08 crop of a 28 px image is 8 px), no blur
    Augmentation(size=28, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0)),
    Augmentation(size=28, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), solarize_p=0.2),
]


class IDXError(ValueError):
    """An IDX file that is not what its name says (wrong magic number, truncated, extra bytes)."""


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array of the IDX file ``path`` (``.gz``: gzipped), whose magic number must be
    ``magic`` (2051: images (N, H, W); 2049: labels (N,)). Raises :class:`IDXError` naming the file
    for a damaged gzip stream, another magic number, a header or data shorter than it declares, or
    bytes after the data."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip's BadGzipFile is an OSError
        raise IDXError(f"{path}: not a readable gzip file ({error}); download it again") from error
    dims = magic & 0xFF
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        kind = "images (N x H x W)" if magic == IMAGES else "labels (N)"
        raise IDXError(f"{path}: magic number {found}, not {magic}: not an IDX file of uint8 {kind}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header ({len(raw)} bytes, {header} expected)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        what = "truncated" if len(raw) < header + size else "longer than its header says"
        raise IDXError(f"{path}: {what}: {len(raw) - header} data bytes for {' x '.join(map(str, shape))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, its own memory


class MNISTDataModule(TensorSetDataModule):
    """MNIST, Fashion-MNIST (Xiao et al. 2017), KMNIST and EMNIST's splits (``variant``): 28 x 28
    grey images from their four IDX files, ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (EMNIST: ``emnist-<split>-{train,test}-...``), gzipped or not, in torchvision's layout
    ``<root>/<MNIST|FashionMNIST|KMNIST|EMNIST>/raw/`` or directly in ``root`` (a flat folder: Debian's
    ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/*.gz``). Held in memory
    (141 MB for 60,000 images as 3 channels). Read as torchvision's ``MNIST`` classes read them
    (EMNIST's images stay as stored, transposed, as torchvision's ``EMNIST`` keeps them; its letters
    labelled 1 to 26).

    Grey images are repeated to 3 identical channels, so every backbone and view recipe applies
    unchanged; on them the colour jitter's saturation and hue change nothing (a grey pixel has no
    saturation or hue) and grayscale is the identity, so the recipe's jitter is brightness and
    contrast ``(0.4, 0.4, 0, 0)``, its crops from 0.2 of the area (a 0.08 crop of 28 px is 8 px)
    and no blur. Normalised with the training pixels' mean and std (Fashion-MNIST: 0.286, 0.353).

    Its other options (batch size, workers, views, seed, labelled subset) are :class:`~.base.SSLDataModule`'s.
    """

    def __init__(
        self,
        root: str = "data",
        variant: Variant = "fashion_mnist",
        augment: Augmentation | list[Augmentation] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            augment=augment or MNIST_AUGMENTATION,
            **kwargs,
        )
        if variant not in CLASSES:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(CLASSES)}")
        self.root, self.variant, self.num_classes, self.image_size = Path(root), variant, CLASSES[variant], 28

    def file_names(self, split: str) -> tuple[str, str]:
        """(images, labels) file names of ``split`` ("train" or "test"), without ``.gz``."""
        if self.variant.startswith("emnist_"):
            part = f"emnist-{self.variant.removeprefix('emnist_')}-{split}"
            return f"{part}-images-idx3-ubyte", f"{part}-labels-idx1-ubyte"
        prefix = "train" if split == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def folders(self) -> list[Path]:
        """Where the files are looked for, in order: torchvision's raw folder, then ``root`` itself."""
        name = "EMNIST" if self.variant.startswith("emnist_") else FOLDERS[self.variant]
        return [self.root / name / "raw", self.root]

    def find(self, name: str) -> Path:
        for folder in self.folders():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        expected = " or ".join(f"{folder}/{name}[.gz]" for folder in self.folders())
        raise FileNotFoundError(
            f"{self.variant} not found: no {expected}. Expected the four IDX files "
            f"({', '.join(self.file_names('train') + self.file_names('test'))}, gzipped or not) in torchvision's "
            "layout <root>/"
            f"{self.folders()[0].relative_to(self.root)}/ or directly in data.root (Fashion-MNIST: apt-get install "
            "dataset-fashion-mnist, then --data.root=/usr/share/datasets/fashion-mnist)"
        )

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        image_file, label_file = (self.find(name) for name in self.file_names(split))
        images, labels = read_idx(image_file, IMAGES), read_idx(label_file, LABELS)
        if len(images) != len(labels):
            raise IDXError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels")
        images = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return images, torch.from_numpy(labels.astype(np.int64))

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        super().setup(stage)
        pixels = self.splits["train"][0][:, 0].float().div(255)
        self.mean, self.std = [pixels.mean().item()] * 3, [pixels.std().item()] * 3

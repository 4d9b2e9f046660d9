"""Small datasets held in memory as one uint8 tensor: CIFAR-10/100 and STL-10, read from the
folders torchvision's own dataset classes download (nothing downloads unless ``download=True``)."""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import Split, SSLDataModule
from .views import Augmentation, TensorImageDataset

CIFAR_AUGMENTATION = [  # the official INTL CIFAR recipe (also solo-learn's): no blur, solarize on view 1 only
    Augmentation(size=32, scale=(0.08, 1.0)),
    Augmentation(size=32, scale=(0.08, 1.0), solarize_p=0.2),
]


class TensorSetDataModule(SSLDataModule):
    """A datamodule whose splits are uint8 (N, 3, H, W) tensors loaded by :meth:`load`."""

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "splits"):
            self.splits = {split: self.load(split) for split in self.split_names}

    split_names = ("train", "test")

    def dataset(self, split: Split, transform: Callable | None) -> TensorImageDataset:
        self.setup()
        images, labels = self.splits["train" if split == "pretrain" else split]
        return TensorImageDataset(images, labels, transform)

    def labels(self, split: Split) -> Tensor:
        self.setup()
        return self.splits["train" if split == "pretrain" else split][1]

    def pretrain_tensors(self) -> tuple[Tensor, Tensor]:
        self.setup()
        parts = ("train", "unlabeled") if "unlabeled" in self.split_names else ("train",)
        return torch.cat([self.splits[p][0] for p in parts]), torch.cat([self.splits[p][1] for p in parts])


NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes (text, "latin1"), and nothing else."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}: bytes are pickled as latin1")
    return codecs.encode(text, encoding, errors)


class _CIFARUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches admitting only what they hold: dicts, lists, str, bytes and
    ints, numpy arrays of numbers and numpy scalars, as Python 2 wrote them and as Python 3 writes
    them with every pickle protocol 0-5: bytes through ``_codecs.encode`` (protocols 0-2, latin1
    only), arrays through ``_reconstruct`` (0-4) or ``_frombuffer`` (5), under numpy 1.x's module
    path (``numpy.core``) or 2.x's (``numpy._core``). None of these runs code: each builds an array
    or a scalar from a dtype and bytes, and an object dtype takes its items from the pickle, where
    any other global (``os.system``, a class with a ``__reduce__``) is refused before anything runs."""

    ALLOWED = {
        *(
            (core, name)
            for core in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        ),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR batch holds only plain types and numeric arrays"
            )
        # numpy 2.x serves numpy 1.x's module path only through a deprecation shim: ask its own
        return super().find_class(
            module.replace("numpy.core.", NUMPY_CORE + ".").replace("numpy._core.", NUMPY_CORE + "."), name
        )


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(uint8 images (N, 3, 32, 32), labels) of one CIFAR python batch, read without running any
    code it might carry; a file of another layout is an error naming it and the expected one."""
    expected = (
        "expected torchvision's CIFAR python batch: a pickled dict with 'data' (N x 3072 uint8) and "
        "'labels' or 'fine_labels' (N ints)"
    )
    try:
        with open(path, "rb") as f:
            batch = _CIFARUnpickler(f, encoding="latin1").load()  # the format's own encoding (python 2 pickles)
        data = batch["data"]
        labels = batch["labels"] if "labels" in batch else batch["fine_labels"]
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(
                f"'data' is {type(data).__name__} {getattr(data, 'dtype', '')} "
                f"{getattr(data, 'shape', '')}, not N x 3072 numbers"
            )
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
        return data.astype(np.uint8).reshape(-1, 3, 32, 32), [int(label) for label in labels]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise ValueError(f"cannot read CIFAR batch {path}: {error} ({expected})") from error


def _missing(name: str, root: Path, expected: list[Path], url: str) -> FileNotFoundError:
    missing = [str(p) for p in expected if not p.exists()]
    return FileNotFoundError(
        f"{name} not found under {root}: missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. "
        f"Expected torchvision's layout ({url}, extracted) - give its parent folder as data.root, or pass "
        "--data.download=true to download it there."
    )


class CIFARDataModule(TensorSetDataModule):
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``) from torchvision's extracted python
    folder: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` or
    ``root/cifar-100-python/{train, test}``. 50,000 train and 10,000 test images of 32x32;
    normalized with each dataset's own statistics (not CIFAR-10's for CIFAR-100). ``eval_mean`` /
    ``eval_std``: other statistics for the clean evaluation images (monitors, kNN, linear): the
    official INTL evaluation normalizes both CIFARs with CIFAR-10's, std rounded to
    (0.247, 0.243, 0.261), as its CIFAR configs do.

    Its other options (batch size, workers, views, seed, labelled subset) are :class:`~.base.SSLDataModule`'s.
    """

    STATS = {
        10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    }

    def __init__(
        self,
        root: str = "data",
        num_classes: int = 10,
        download: bool = False,
        augment: Augmentation | list[Augmentation] | None = None,
        eval_mean: tuple[float, float, float] | None = None,
        eval_std: tuple[float, float, float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            augment=augment or CIFAR_AUGMENTATION,
            **kwargs,
        )
        self.eval_mean, self.eval_std = eval_mean, eval_std
        if num_classes not in self.STATS:
            raise ValueError(f"CIFAR has 10 or 100 classes, not {num_classes}")
        self.root, self.num_classes, self.download = Path(root), num_classes, download
        self.mean, self.std = self.STATS[num_classes]
        self.image_size = 32

    @property
    def folder(self) -> Path:
        return self.root / ("cifar-10-batches-py" if self.num_classes == 10 else "cifar-100-python")

    def files(self, split: str) -> list[Path]:
        if self.num_classes == 100:
            return [self.folder / split]
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [self.folder / name for name in names]

    def prepare_data(self) -> None:
        if self.download:
            from torchvision import datasets

            dataset = datasets.CIFAR10 if self.num_classes == 10 else datasets.CIFAR100
            dataset(str(self.root), train=True, download=True)

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        files = self.files(split)
        if not all(f.exists() for f in files):
            url = f"https://www.cs.toronto.edu/~kriz/{self.folder.name.replace('-batches-py', '-python')}.tar.gz"
            raise _missing(f"CIFAR-{self.num_classes}", self.root, self.files("train") + self.files("test"), url)
        images, labels = [], []
        for path in files:
            data, batch_labels = read_cifar_batch(path)
            images.append(data)
            labels.extend(batch_labels)
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)


class STL10DataModule(TensorSetDataModule):
    """STL-10 from its binary folder ``root/stl10_binary/{train,test}_{X,y}.bin`` and
    ``unlabeled_X.bin``: 96x96 images, 10 classes, 5,000 labelled train, 8,000 test and 100,000
    unlabeled images. Pretraining uses train + unlabeled (memory-mapped, not read into RAM);
    ``image_size`` is the crop size of the views and of evaluation (96 by default).

    Its other options (batch size, workers, views, seed, labelled subset) are :class:`~.base.SSLDataModule`'s.
    """

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        image_size: int = 96,
        augment: Augmentation | list[Augmentation] | None = None,
        use_unlabeled: bool = True,
        **kwargs,
    ) -> None:
        augment = augment or [
            Augmentation(size=image_size, blur_p=1.0),
            Augmentation(size=image_size, blur_p=0.1, solarize_p=0.2),
        ]
        super().__init__(
            augment=augment,
            **kwargs,
        )
        self.root, self.download, self.image_size, self.use_unlabeled = Path(root), download, image_size, use_unlabeled
        self.num_classes = 10
        self.mean, self.std = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)

    @property
    def split_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("train", "test", "unlabeled") if self.use_unlabeled else ("train", "test")

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import STL10

            STL10(str(self.root), split="train+unlabeled", download=True)

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        folder = self.root / "stl10_binary"
        x, y = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
        if not x.exists() or (split != "unlabeled" and not y.exists()):
            expected = [folder / f"{s}_{k}.bin" for s in ("train", "test") for k in "Xy"] + [folder / "unlabeled_X.bin"]
            raise _missing("STL-10", self.root, expected, "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz")
        # column-major 3x96x96 per image: (N, 3, W, H) in C order, so swap the last two axes
        images = np.memmap(x, dtype=np.uint8, mode="c").reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
        labels = (
            torch.from_numpy(np.fromfile(y, dtype=np.uint8).astype(np.int64)) - 1
            if split != "unlabeled"
            else torch.full((len(images),), -1)
        )
        return torch.from_numpy(images), labels

    def dataset(self, split: Split, transform: Callable | None) -> Dataset:
        if split == "pretrain" and self.use_unlabeled:
            self.setup()
            return ConcatImages([TensorImageDataset(*self.splits[s], transform) for s in ("train", "unlabeled")])
        return super().dataset(split, transform)

    def eval_transform(self) -> Callable:
        normalize = super().eval_transform()
        if self.image_size == 96:
            return normalize
        from torchvision.transforms import v2

        return v2.Compose([v2.Resize(self.image_size, antialias=True), normalize])


class ConcatImages(Dataset):
    """Datasets one after another, indexable by ``i`` or ``(i, seed)`` like each part."""

    def __init__(self, parts: list[Dataset]) -> None:
        self.parts, self.offsets = parts, np.cumsum([0] + [len(p) for p in parts])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key):
        index, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        local = index - int(self.offsets[part])
        return self.parts[part][(local, *rest) if rest else local]

"""The real on-disk formats, written small in the test: CIFAR pickles, STL-10 binaries, an
ImageFolder of JPEG files with one corrupt file."""

import pickle
import pickletools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from spectral_ssl.data import (
    Augmentation,
    CIFARDataModule,
    ImageFolderDataModule,
    STL10DataModule,
    UnreadableImageError,
)
from spectral_ssl.data.synthetic import write_cifar_folder, write_image_folder


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_reads_torchvisions_python_folder(tmp_path, num_classes):
    written = write_cifar_folder(tmp_path, 6 * (5 if num_classes == 10 else 1), 6, num_classes=num_classes)
    data = CIFARDataModule(root=str(tmp_path), num_classes=num_classes, num_workers=0, batch_size=4)
    train = data.dataset("train", None)
    first = "data_batch_1" if num_classes == 10 else "train"
    image, label = train[1]
    # row-major 3 x 32 x 32: the red plane first
    assert torch.equal(image, torch.from_numpy(written[first][0][1].reshape(3, 32, 32)))
    assert label == written[first][1][1]
    assert len(train) == (30 if num_classes == 10 else 6) and len(data.dataset("test", None)) == 6
    views, labels = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert len(views) == 2 and views[0].shape == (4, 3, 32, 32) and views[0].dtype == torch.float32


def test_cifar_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=true"):
        CIFARDataModule(root=str(tmp_path)).setup()


def test_stl10_reads_the_column_major_binaries(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    planes = {}
    for split, n in (("train", 4), ("test", 3), ("unlabeled", 5)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # the file stores each plane column by column
        if split != "unlabeled":
            np.array([1, 10, 3, 2][:n], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
        planes[split] = images
    data = STL10DataModule(root=str(tmp_path), num_workers=0, batch_size=3)
    image, label = data.dataset("train", None)[1]
    assert torch.equal(image, torch.from_numpy(planes["train"][1])) and label == 9  # labels 1..10 -> 0..9
    pretrain = data.dataset("pretrain", None)
    assert len(pretrain) == 9 and torch.equal(pretrain[(6, 0)][0], torch.from_numpy(planes["unlabeled"][2]))
    assert len(data.dataset("test", None)) == 3


def test_image_folder_reads_jpegs_and_skips_a_corrupt_one(tmp_path, caplog):
    write_image_folder(tmp_path)
    data = ImageFolderDataModule(
        root=str(tmp_path), image_size=32, eval_resize=36, num_workers=0, batch_size=7, augment=Augmentation(size=32)
    )
    data.setup()
    assert data.class_names == ["cat", "dog"] and len(data.samples["train"]) == 7 and len(data.samples["test"]) == 6
    image, label = data.dataset("test", None)[3]
    assert image.shape == (3, 40, 48) and image.dtype == torch.uint8 and label == 1
    expected = np.asarray(Image.open(tmp_path / "val" / "dog" / "0.JPEG").convert("RGB"))
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 2  # libjpeg vs PIL rounding
    with caplog.at_level("WARNING"):
        views, labels = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert views[0].shape == (6, 3, 32, 32) and len(labels) == 6  # 7 files, one unreadable
    assert data.pop_skipped() == [str(tmp_path / "train" / "dog" / "broken.JPEG")]
    assert "broken.JPEG" in caplog.text
    bank, _ = data.knn_dataloaders(batch_size=16)
    assert next(iter(bank))[0].shape == (6, 3, 32, 32)


def test_image_folder_can_fail_on_a_corrupt_image_instead(tmp_path):
    write_image_folder(tmp_path)
    data = ImageFolderDataModule(root=str(tmp_path), on_corrupt="raise", num_workers=0)
    data.setup()
    with pytest.raises(UnreadableImageError, match="broken.JPEG"):
        [data.dataset("train", None)[i] for i in range(7)]


def test_image_folder_missing_path_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/<class>/<image>"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere")).setup()


def test_image_index_lists_what_torchvision_lists_in_numpy_arrays(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from spectral_ssl.data import ImageIndex

    write_image_folder(tmp_path, per_class=4)
    (tmp_path / "train" / "cat" / "UPPER.JPG").write_bytes((tmp_path / "train" / "cat" / "0.JPEG").read_bytes())
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    folder = tmp_path / "train"
    index = ImageIndex.scan(folder, ["cat", "dog"])
    expected = make_dataset(str(folder), {"cat": 0, "dog": 1}, extensions=IMG_EXTENSIONS)
    assert [index[i] for i in range(len(index))] == expected
    assert all(isinstance(a, np.ndarray) for a in (index.names, index.ends, index.labels))
    assert index.nbytes / len(index) < 1024  # the bound: at most 1 KB of index per image


def test_image_index_is_built_once_and_rebuilt_when_a_class_folder_changes(tmp_path, monkeypatch):
    from spectral_ssl.data import ImageIndex

    write_image_folder(tmp_path / "data", corrupt=False)
    cache = tmp_path / "cache"
    data = ImageFolderDataModule(root=str(tmp_path / "data"), index_cache=str(cache), num_workers=0)
    data.setup()
    assert len(list(cache.glob("index-*.npz"))) == 2  # train and val
    scans = []
    original = ImageIndex.scan.__func__
    monkeypatch.setattr(ImageIndex, "scan", classmethod(lambda cls, *a: scans.append(a) or original(cls, *a)))
    again = ImageFolderDataModule(root=str(tmp_path / "data"), index_cache=str(cache), num_workers=0)
    again.setup()
    assert scans == [] and [again.samples["train"][i] for i in range(6)] == [data.samples["train"][i] for i in range(6)]
    (tmp_path / "data" / "train" / "dog" / "new.JPEG").write_bytes(
        (tmp_path / "data" / "train" / "dog" / "0.JPEG").read_bytes()
    )
    third = ImageFolderDataModule(root=str(tmp_path / "data"), index_cache=str(cache), num_workers=0)
    third.setup()
    assert len(scans) == 1 and len(third.samples["train"]) == 7


def with_numpy_1_paths(pickled: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it: module ``numpy.core`` for numpy 2.x's ``numpy._core``.
    Rewritten opcode by opcode (strings re-encoded, FRAME opcodes, which are optional, dropped)."""
    ops = list(pickletools.genops(pickled))
    out = bytearray()
    for (op, arg, pos), following in zip(ops, [*(o[2] for o in ops[1:]), len(pickled)]):
        raw = pickled[pos:following]
        if op.name == "FRAME":
            continue
        if isinstance(arg, str) and "numpy._core" in arg:
            text = arg.replace("numpy._core", "numpy.core").encode()
            if op.name == "GLOBAL":
                raw = b"c" + text.replace(b" ", b"\n") + b"\n"
            elif op.name == "SHORT_BINUNICODE":
                raw = b"\x8c" + bytes([len(text)]) + text
            elif op.name == "BINUNICODE":
                raw = b"X" + len(text).to_bytes(4, "little") + text
            else:
                raise AssertionError(f"unexpected opcode {op.name}")
        out += raw
    return bytes(out)


@pytest.mark.parametrize("numpy_paths", ["numpy 2.x", "numpy 1.x"])
@pytest.mark.parametrize("protocol", range(6))
def test_cifar_batches_written_by_python_3_read_with_every_protocol(tmp_path, protocol, numpy_paths):
    """Users write their own CIFAR-format sets (subsets, corrupted variants) with Python 3: bytes go
    through _codecs.encode (protocols 0-2), arrays through _reconstruct (0-4) or _frombuffer (5),
    labels may be numpy integers; numpy 1.x names its modules numpy.core."""
    written = write_cifar_folder(tmp_path, train_images=30, test_images=6)
    folder = tmp_path / "cifar-10-batches-py"
    data, labels = written["data_batch_3"]
    batch = {"batch_label": b"training batch 3 of 5", "data": data, "labels": [np.int64(v) for v in labels]}
    pickled = pickle.dumps(batch, protocol=protocol)
    assert b"numpy._core" in pickled
    if numpy_paths == "numpy 1.x":
        pickled = with_numpy_1_paths(pickled)
        assert b"numpy._core" not in pickled and b"numpy.core" in pickled
    with warnings.catch_warnings():  # numpy 2.x reads numpy 1.x's paths through a deprecation shim
        warnings.simplefilter("ignore", DeprecationWarning)
        assert pickle.loads(pickled)["labels"] == labels  # a valid pickle
    (folder / "data_batch_3").write_bytes(pickled)
    train = CIFARDataModule(root=str(tmp_path), num_workers=0).dataset("train", None)
    offset = 2 * 6  # after data_batch_1 and data_batch_2
    for i in range(6):
        image, label = train[offset + i]
        assert torch.equal(image, torch.from_numpy(data[i].reshape(3, 32, 32))) and label == labels[i]


def test_a_cifar_batch_that_decodes_bytes_with_another_codec_is_refused(tmp_path):
    write_cifar_folder(tmp_path, train_images=30, test_images=6)
    pickled = pickle.dumps({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 6, "x": b"ab"}, protocol=2)
    assert b"latin1" in pickled  # the codec of protocol 2's bytes (memoized: written once)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickled.replace(b"latin1", b"rot_13", 1))
    with pytest.raises(ValueError, match=r"data_batch_2: refused _codecs.encode with encoding 'rot_13'"):
        CIFARDataModule(root=str(tmp_path)).setup()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_malicious_cifar_batch_runs_no_code(tmp_path):
    write_cifar_folder(tmp_path, train_images=30, test_images=6)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 6, "x": _Payload(marker)}, f)
    with pytest.raises(ValueError, match=r"data_batch_2: refused global posix.system"):
        CIFARDataModule(root=str(tmp_path)).setup()
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, message", [("truncate", "data_batch_1"), ("labels", "6 images but 5 labels"), ("shape", "not N x 3072")]
)
def test_a_damaged_cifar_batch_names_the_file_and_the_layout(tmp_path, damage, message):
    write_cifar_folder(tmp_path, train_images=30, test_images=6)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    else:
        data = np.zeros((6, 3072) if damage == "labels" else (6, 100), np.uint8)
        with open(path, "wb") as f:
            pickle.dump({"data": data, "labels": [0] * (5 if damage == "labels" else 6)}, f)
    with pytest.raises(ValueError, match=message) as error:
        CIFARDataModule(root=str(tmp_path)).setup()
    assert "data_batch_1" in str(error.value) and "expected torchvision's CIFAR python batch" in str(error.value)


@pytest.mark.parametrize(
    "variant, folder", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST"), ("kmnist", "KMNIST")]
)
def test_the_mnist_family_reads_what_torchvisions_readers_read(tmp_path, variant, folder):
    """Small IDX files in torchvision's layout (<root>/<Name>/raw/, uncompressed, as its download
    leaves them) read as torchvision's own class reads them; the same files gzipped in a flat
    folder (Debian's dataset-fashion-mnist layout) read the same."""
    import torchvision

    from spectral_ssl.data import MNISTDataModule
    from spectral_ssl.data.synthetic import write_idx_folder

    write_idx_folder(tmp_path / "raw_layout" / folder / "raw", train_images=30, test_images=12)
    write_idx_folder(tmp_path / "flat", train_images=30, test_images=12, gzipped=True)
    reference = {"FashionMNIST": torchvision.datasets.FashionMNIST, "MNIST": torchvision.datasets.MNIST,
                 "KMNIST": torchvision.datasets.KMNIST}[folder]  # fmt: skip
    for layout in ("raw_layout", "flat"):
        data = MNISTDataModule(root=str(tmp_path / layout), variant=variant)
        data.setup("fit")
        for split, train in (("train", True), ("test", False)):
            theirs = reference(str(tmp_path / "raw_layout"), train=train, download=False)
            images, labels = data.splits[split]
            assert images.shape == (len(theirs.data), 3, 28, 28) and images.dtype == torch.uint8
            assert all(torch.equal(images[:, c], theirs.data) for c in range(3))  # grey, repeated to 3 channels
            assert torch.equal(labels, theirs.targets)
    assert data.num_classes == 10 and data.image_size == 28
    pixels = data.splits["train"][0][:, 0].double() / 255
    assert data.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-6)


def test_emnist_splits_read_as_torchvision_reads_them(tmp_path):
    import torchvision

    from spectral_ssl.data import MNISTDataModule
    from spectral_ssl.data.synthetic import write_idx_folder

    write_idx_folder(tmp_path / "EMNIST" / "raw", 30, 12, 47, prefix=("emnist-balanced-train", "emnist-balanced-test"))
    data = MNISTDataModule(root=str(tmp_path), variant="emnist_balanced")
    data.setup("fit")
    theirs = torchvision.datasets.EMNIST(str(tmp_path), split="balanced", train=True, download=False)
    assert torch.equal(data.splits["train"][0][:, 0], theirs.data) and torch.equal(
        data.splits["train"][1], theirs.targets
    )
    assert data.num_classes == 47


def damaged_idx(folder, damage: str) -> None:
    """One file of a written flat folder damaged."""
    import gzip

    images = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    if damage == "magic":
        images.write_bytes(gzip.compress(b"\x00\x00\x08\x04" + raw[4:]))
    elif damage == "truncated":
        images.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "labels":
        from spectral_ssl.data.synthetic import idx_bytes

        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(29, dtype=np.uint8))))
    elif damage == "missing":
        images.unlink()
    elif damage == "gzip":
        images.write_bytes(images.read_bytes()[:-40])  # a download cut short: the gzip stream ends early


@pytest.mark.parametrize(
    "damage, message",
    [
        ("magic", r"train-images-idx3-ubyte.gz: magic number 2052, not 2051: not an IDX file of uint8 images"),
        ("truncated", r"train-images-idx3-ubyte.gz: truncated: 23420 data bytes for 30 x 28 x 28"),
        ("labels", r"train-images-idx3-ubyte.gz holds 30 images but .*train-labels-idx1-ubyte.gz 29 labels"),
        ("gzip", r"train-images-idx3-ubyte.gz: not a readable gzip file \(.*\); download it again"),
        ("missing", r"fashion_mnist not found: no .*/FashionMNIST/raw/train-images-idx3-ubyte\[.gz\] or "
                    r".*/train-images-idx3-ubyte\[.gz\]. Expected the four IDX files"),
    ],
)  # fmt: skip
def test_a_damaged_or_missing_idx_file_is_one_error_naming_it(tmp_path, damage, message, tiny):
    from spectral_ssl.commands import main
    from spectral_ssl.data.synthetic import write_idx_folder

    write_idx_folder(tmp_path / "flat", train_images=30, test_images=12, gzipped=True)
    damaged_idx(tmp_path / "flat", damage)
    with pytest.raises(SystemExit, match=f"error: .*{message}"):
        main(["pretrain", *tiny, "--data=spectral_ssl.data.MNISTDataModule", f"--data.root={tmp_path / 'flat'}",
              "--data.batch_size=8", "--trainer.max_steps=1", "--output_dir", str(tmp_path / "runs")])  # fmt: skip
    assert not list((tmp_path / "runs").glob("**/*.ckpt"))

"""What each part of a run costs as the dataset grows: measured here at growing sizes, fitted, and
extrapolated to ImageNet-1k (1.28 M training / 50 k validation images) and ImageNet-21k (14 M).

    python tools/benchmark.py scale [--quick] [--out table.md]

Every component runs in a fresh process, so its peak host memory (VmHWM: the resident-set high
water mark, reset after the data are made) is its own; DataLoader workers are measured by their
private memory (USS), the part that copy-on-read growth shows in.

- index: the ImageFolder file index of a synthetic tree (1,000 class folders of tiny JPEGs):
  the scan, the cached load, the bytes per image held.
- data path: one training epoch of the real ``ImageFolderDataModule`` loader (2 workers, the
  ImageNet config's view recipes at 32 px so that the CPU time is the loader's, not the crops')
  over the same trees; workers' private memory after the first batch and at the end of the epoch,
  for our numpy index and for a Python list of (path, label) tuples (torchvision's ImageFolder).
- monitors: ``spectral-ssl pretrain`` (in process, through the real CLI) with the ImageNet config's
  monitors and budgets (kNN bank 100,000, queries 10,000, spectrum and online probe 10,000
  held-out images), a width-4 ResNet-18 and in-memory sets of 32 x 32 images of growing size
  (50,000 held-out images, like ImageNet's validation set); seconds of each monitor at one epoch
  end and at fit start (the two baselines), and the peak memory beyond the dataset's own.
- knn / linear-fast: the search and the streamed classifier of the two commands on 2048-d
  features (ResNet-50's width) of growing banks, held in memory or in a ``FeatureFile``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from spectral_ssl.data.tensor_sets import TensorSetDataModule  # noqa: E402
from spectral_ssl.data.views import Augmentation  # noqa: E402

IMAGENET, IMAGENET_21K = 1_281_167, 14_197_122
TINY_JPEG = None  # bytes of one 16 x 16 JPEG, made once per process


class SyntheticImages(TensorSetDataModule):
    """Random 32 x 32 uint8 images of ``num_classes`` classes held in memory (``num_train`` and
    ``num_test`` of them): a dataset of any size for measuring what does not depend on pixels."""

    def __init__(
        self,
        num_train: int = 50_000,
        num_test: int = 10_000,
        num_classes: int = 1000,
        augment: Augmentation | list[Augmentation] = Augmentation(size=32),
        batch_size: int = 256,
        num_workers: int = 0,
        num_views: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, num_views=num_views, augment=augment, seed=seed
        )
        self.num_train, self.num_test, self.num_classes = num_train, num_test, num_classes
        self.mean, self.std, self.image_size = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32

    def load(self, split: str):
        n = self.num_train if split == "train" else self.num_test
        generator = torch.Generator().manual_seed(1 if split == "train" else 2)
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(n) % 1000


# --- measuring in a fresh process ---------------------------------------------------------------
def _status(pid: int | str = "self") -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak() -> None:
    """Starts VmHWM afresh from the current resident set (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    return _status()["VmHWM"]


def private_bytes(pid: int) -> int:
    """USS: the pages only this process holds (what copy-on-read growth adds)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def child_pids() -> list[int]:
    pid = os.getpid()
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return children


def _run(queue, fn, args) -> None:
    mp.set_start_method("fork", force=True)  # DataLoader workers fork as in a real run (spawn would copy all)
    try:
        queue.put(fn(*args))
    except BaseException as error:  # report, do not hang the parent
        queue.put({"error": f"{type(error).__name__}: {error}"})
        raise


def measure(fn, *args) -> dict:
    """``fn(*args)`` in a fresh (spawned) process; returns the dict it returns."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(queue, fn, args))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"{fn.__name__}{args}: {result['error']}")
    return result


# --- the components ---------------------------------------------------------------------------
def write_tree(root: Path, images: int, classes: int = 1000) -> None:
    """``root/train/<class>/<i>.JPEG`` (and one validation image a class) as copies of one tiny JPEG."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    for split, count in (("train", images), ("val", classes)):
        for c in range(classes):
            (root / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / split / f"n{i % classes:08d}" / f"n{i % classes:08d}_{i}.JPEG").write_bytes(data)


def index_component(images: int) -> dict:
    from spectral_ssl.data import ImageIndex

    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), images)
        folder = Path(tmp) / "train"
        classes = sorted(os.listdir(folder))
        reset_peak()
        before = _status()["VmRSS"]
        start = time.perf_counter()
        index = ImageIndex.scan(folder, classes)
        scan = time.perf_counter() - start
        ImageIndex.cached(folder, classes, Path(tmp) / "cache")
        start = time.perf_counter()
        cached = ImageIndex.cached(folder, classes, Path(tmp) / "cache")
        load = time.perf_counter() - start
        assert len(cached) == len(index) == images
        return {
            "scan_s": scan,
            "load_s": load,
            "bytes_per_image": index.nbytes / images,
            "peak_over_start": peak_bytes() - before,
        }


def data_path_component(images: int, as_list: bool) -> dict:
    from spectral_ssl.data import ImageFolderDataModule

    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), images)
        recipes = [Augmentation(size=32, blur_p=1.0), Augmentation(size=32, blur_p=0.1, solarize_p=0.2)]
        data = ImageFolderDataModule(root=tmp, augment=recipes, batch_size=256, num_workers=2)
        data.setup()
        if as_list:  # what torchvision's ImageFolder holds: a list of (str, int) tuples
            index = data.samples["train"]
            data.samples["train"] = [index[i] for i in range(len(index))]
        loader = data.train_dataloader()
        start, seen, first = time.perf_counter(), 0, None
        for _views, labels, _ in loader:
            seen += len(labels)
            if first is None:
                first = {pid: private_bytes(pid) for pid in child_pids()}
                start_epoch = time.perf_counter()
        end = {pid: private_bytes(pid) for pid in first}
        seconds = time.perf_counter() - start_epoch
        growth = max(end[pid] - first[pid] for pid in first)
        return {
            "seconds_per_image": seconds / max(seen - 256, 1),
            "worker_growth": growth,
            "worker_private": max(end.values()),
            "total_s": time.perf_counter() - start,
        }


class _PathsOnly(torch.utils.data.Dataset):
    """Looks up each sample's (path, label) the way the image datasets do, and reads no file."""

    def __init__(self, samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> int:
        path, label = self.samples[i]
        return label + len(path)


def index_workers_component(entries: int, as_list: bool) -> dict:
    """One epoch of 2 DataLoader workers over an index of ``entries`` ImageNet-like relative paths
    (``n01440764/n01440764_10026.JPEG``), as a numpy :class:`ImageIndex` or a Python list of
    tuples: the workers' private memory after the first batch and at the end."""
    import numpy as np

    from spectral_ssl.data import ImageIndex

    names = [f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG".encode() for i in range(entries)]
    ends = np.cumsum([len(n) for n in names])
    index = ImageIndex(
        "/data/imagenet/train",
        np.frombuffer(b"".join(names), np.uint8).copy(),
        ends,
        (np.arange(entries) % 1000).astype(np.int16),
        [f"n{c:08d}" for c in range(1000)],
    )
    del names
    samples = [index[i] for i in range(entries)] if as_list else index
    held = (
        sum(sys.getsizeof(s) + sys.getsizeof(s[0]) for s in samples) + sys.getsizeof(samples)
        if as_list
        else index.nbytes
    )
    loader = torch.utils.data.DataLoader(
        _PathsOnly(samples), batch_size=1024, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    first, start = None, time.perf_counter()
    for _ in loader:
        if first is None:
            first = {pid: private_bytes(pid) for pid in child_pids()}
            last = dict(first)
        else:
            last = {pid: private_bytes(pid) for pid in first}  # just before the workers exit
    return {
        "worker_growth": max(last[pid] - first[pid] for pid in first),
        "held": held,
        "seconds": time.perf_counter() - start,
    }


MONITOR_ARGS = [
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.sync_batchnorm=false",
    "--trainer.precision=32-true",
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.max_steps=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.backbone.name=resnet18",
    "--model.init_args.backbone.cifar_stem=true",
    "--model.init_args.backbone.width=4",
    "--model.init_args.projector_dims=[64,64,64]",
    "--knn.every_n_epochs=1",
    "--spectrum.every_n_epochs=1",
    "--online_probe.every_n_epochs=1",
]


def monitor_component(images: int, held_out: int, output: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from spectral_ssl.commands import pretrain
    from spectral_ssl.evaluation import monitor

    seconds: dict[str, float] = {}

    def timed(cls, hook, name):
        original = getattr(cls, hook)

        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            result = original(self, *args, **kwargs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            return result

        setattr(cls, hook, wrapper)

    timed(monitor.KNNMonitor, "on_fit_start", "knn baselines (raw pixels + random init)")
    timed(monitor.KNNMonitor, "on_train_epoch_end", "knn monitor, one evaluation")
    timed(monitor.SpectrumMonitor, "on_train_epoch_end", "spectrum monitor")
    timed(monitor.OnlineLinearProbe, "on_train_epoch_end", "online probe evaluation")
    data = SyntheticImages(num_train=images, num_test=held_out)
    data.setup()
    dataset_bytes = sum(x.nbytes for split in data.splits.values() for x in split)
    SyntheticImages.setup = lambda self, stage=None: setattr(self, "splits", data.splits)  # made once, above
    reset_peak()
    before = _status()["VmRSS"]
    cli = pretrain(
        [
            "--config",
            str(ROOT / "configs" / "imagenet" / "intl.yaml"),
            "--data=scale_benchmark.SyntheticImages",
            f"--data.num_train={images}",
            f"--data.num_test={held_out}",
            '--data.augment={"size": 32}',
            *MONITOR_ARGS,
            "--output_dir",
            output,
            "--run_name",
            f"monitors{images}",
        ]
    )
    knn = next(c for c in cli.trainer.callbacks if isinstance(c, monitor.KNNMonitor))
    return {
        "seconds": seconds,
        "bank": knn.sizes[0],
        "queries": knn.sizes[1],
        "peak_over_data": peak_bytes() - before,
        "dataset_bytes": dataset_bytes,
    }


def _feature_bank(rows: int, dim: int, in_file: Path | None):
    from spectral_ssl.evaluation import FeatureFile

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(rows) % 1000
    if in_file is None:
        return torch.randn(rows, dim, generator=generator), labels
    store = FeatureFile(in_file, dim)
    for start in range(0, rows, 16384):
        store.append(torch.randn(min(16384, rows - start), dim, generator=generator))
    return store.finish(), labels


def knn_component(rows: int, queries: int, in_file: bool) -> dict:
    from spectral_ssl.evaluation import knn_accuracy

    with tempfile.TemporaryDirectory() as tmp:
        bank, labels = _feature_bank(rows, 2048, Path(tmp) / "bank.f32" if in_file else None)
        query = torch.randn(queries, 2048, generator=torch.Generator().manual_seed(1))
        reset_peak()
        before = _status()["VmRSS"]
        start = time.perf_counter()
        knn_accuracy(bank, labels, query, torch.arange(queries) % 1000, k=20, backend="torch")
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "peak_over_start": peak_bytes() - before,
            "bank_bytes": rows * 2048 * 4,
            "resident_bank": 0 if in_file else rows * 2048 * 4,
        }


def linear_component(rows: int) -> dict:
    from spectral_ssl.evaluation import linear_probe

    with tempfile.TemporaryDirectory() as tmp:
        store, labels = _feature_bank(rows, 2048, Path(tmp) / "train.f32")
        test = torch.randn(1000, 2048)
        reset_peak()
        before = _status()["VmRSS"]
        start = time.perf_counter()
        linear_probe(store, labels, test, torch.arange(1000), epochs=1)
        return {"seconds_per_epoch": time.perf_counter() - start, "peak_over_start": peak_bytes() - before}


# --- the table ----------------------------------------------------------------------------------
def growth(sizes: list[int], values: list[float]) -> float:
    """Exponent b of value ~ size^b between the two largest sizes."""
    if len(sizes) < 2 or min(values[-2:]) <= 0:
        return float("nan")
    return math.log(values[-1] / values[-2]) / math.log(sizes[-1] / sizes[-2])


def mb(x: float) -> str:
    return f"{x / 2**20:,.1f} MB" if x < 2**30 else f"{x / 2**30:,.2f} GB"


def seconds(x: float) -> str:
    if x >= 3600:
        return f"{x / 3600:,.1f} h"
    return f"{x:,.1f} s" if x >= 1 else f"{1e3 * x:,.1f} ms"


def run_scale(args) -> str:
    trees = [2_000, 8_000] if args.quick else [2_000, 8_000, 32_000]
    memory_sets = [20_000, 60_000] if args.quick else [50_000, 500_000]
    banks = [25_000, 100_000] if args.quick else [50_000, 200_000]
    queries = 1_000 if args.quick else 2_000
    rows = []

    def row(component, sizes, values, fmt, exponent, n1k, n21k, bound):
        measured = ", ".join(f"{n:,}: {fmt(v)}" for n, v in zip(sizes, values))
        rows.append(f"| {component} | {measured} | {exponent} | {n1k} | {n21k} | {bound} |")
        print(rows[-1], flush=True)

    if "index" in args.components:
        index = [measure(index_component, n) for n in trees]
        scan = [r["scan_s"] for r in index]
        per_image = index[-1]["scan_s"] / trees[-1]
        row(
            "index: scan of the tree",
            trees,
            scan,
            seconds,
            f"n^{growth(trees, scan):.2f}",
            seconds(per_image * IMAGENET),
            seconds(per_image * IMAGENET_21K),
            "once per tree (cached)",
        )
        load = [r["load_s"] for r in index]
        row(
            "index: cached load",
            trees,
            load,
            seconds,
            f"n^{growth(trees, load):.2f}",
            seconds(load[-1] / trees[-1] * IMAGENET),
            seconds(load[-1] / trees[-1] * IMAGENET_21K),
            "per process",
        )
        held = [r["bytes_per_image"] for r in index]
        row(
            "index: host memory per image",
            trees,
            held,
            lambda v: f"{v:.0f} B",
            "constant",
            mb(held[-1] * IMAGENET),
            mb(held[-1] * IMAGENET_21K),
            "<= 1 KB / image (goal)",
        )

    if "data" in args.components:
        path = [measure(data_path_component, n, False) for n in trees]
        per = [r["seconds_per_image"] for r in path]
        row(
            "data path: real ImageFolder loader, seconds per image (32 px views, 2 workers)",
            trees,
            per,
            seconds,
            f"n^{growth(trees, per):.2f}",
            "constant per image",
            "constant per image",
            "linear in epoch size",
        )
        growth_bytes = [r["worker_growth"] for r in path]
        row(
            "data path: its worker private memory growth over the epoch",
            trees,
            growth_bytes,
            mb,
            f"n^{growth(trees, growth_bytes):.2f}",
            "see next rows",
            "see next rows",
            "flat (goal)",
        )
        entries = [128_000, 512_000] if args.quick else [160_000, 640_000, IMAGENET]
        for as_list, name in ((False, "ours (numpy ImageIndex)"), (True, "a Python list of tuples (torchvision)")):
            results = [measure(index_workers_component, n, as_list) for n in entries]
            grown = [max(r["worker_growth"], 0) for r in results]
            slope = max(grown[-1] - grown[-2], 0) / (entries[-1] - entries[-2])  # bytes per entry beyond the noise
            row(
                f"index under 2 workers, one epoch: worker private growth, {name}",
                entries,
                grown,
                mb,
                f"{slope:.1f} B / image",
                mb(slope * IMAGENET) + " / worker",
                mb(slope * IMAGENET_21K) + " / worker",
                "flat (goal)" if not as_list else "x workers x ranks",
            )
            held = [r["held"] for r in results]
            row(
                f"index held by the main process, {name}",
                entries,
                held,
                mb,
                f"{held[-1] / entries[-1]:.0f} B / image",
                mb(held[-1] / entries[-1] * IMAGENET),
                mb(held[-1] / entries[-1] * IMAGENET_21K),
                "<= 1 KB / image (goal)",
            )

    if "monitors" in args.components:
        with tempfile.TemporaryDirectory() as tmp:
            monitors = [measure(monitor_component, n, 50_000, tmp) for n in memory_sets]
        for name in monitors[0]["seconds"]:
            values = [m["seconds"][name] for m in monitors]
            banks_used = ", ".join(f"{m['bank']:,}" for m in monitors)
            row(
                f"{name} (bank {banks_used}; queries {monitors[0]['queries']:,})",
                memory_sets,
                values,
                seconds,
                f"n^{growth(memory_sets, values):.2f}",
                "= budget's",
                "= budget's",
                "bank <= knn.max_bank",
            )
        extra = [m["peak_over_data"] for m in monitors]
        row(
            "monitors: peak host memory beyond the dataset",
            memory_sets,
            extra,
            mb,
            f"n^{growth(memory_sets, extra):.2f}",
            "= budget's",
            "= budget's",
            "independent of the dataset",
        )

    if "knn" in args.components:
        for in_file in (False, True):
            results = [measure(knn_component, n, queries, in_file) for n in banks]
            times = [r["seconds"] for r in results]
            per_pair = times[-1] / (banks[-1] * queries)
            where = "bank in a FeatureFile" if in_file else "bank in memory"
            row(
                f"knn: search, {queries:,} queries x 2048-d, {where}",
                banks,
                times,
                seconds,
                f"n^{growth(banks, times):.2f}",
                seconds(per_pair * IMAGENET * 50_000) + " (50 k queries, CPU)",
                seconds(per_pair * IMAGENET_21K * 50_000) + " (CPU)",
                "linear in bank x queries",
            )
            peaks = [r["peak_over_start"] + r["resident_bank"] for r in results]
            row(
                f"knn: peak host memory, {where}",
                banks,
                peaks,
                mb,
                f"n^{growth(banks, peaks):.2f}",
                mb(peaks[-1] / banks[-1] * IMAGENET) if not in_file else mb(peaks[-1]),
                mb(peaks[-1] / banks[-1] * IMAGENET_21K) if not in_file else mb(peaks[-1]),
                "bank / ranks" if not in_file else "one chunk + queries",
            )
    if "linear" in args.components:
        linear = [measure(linear_component, n) for n in banks]
        times = [r["seconds_per_epoch"] for r in linear]
        row(
            "linear-fast: one epoch, features in a FeatureFile (CPU)",
            banks,
            times,
            seconds,
            f"n^{growth(banks, times):.2f}",
            seconds(times[-1] / banks[-1] * IMAGENET),
            seconds(times[-1] / banks[-1] * IMAGENET_21K),
            "x 100 epochs",
        )
        peaks = [r["peak_over_start"] for r in linear]
        row(
            "linear-fast: peak host memory, FeatureFile",
            banks,
            peaks,
            mb,
            f"n^{growth(banks, peaks):.2f}",
            mb(peaks[-1]),
            mb(peaks[-1]),
            "one block (16,384 rows)",
        )

    header = [
        f"Scale benchmark; CPU ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Extrapolated linearly from the largest size measured.",
        "",
        "| component | measured (images: value) | growth | ImageNet-1k (1.28 M) | ImageNet-21k (14 M) | bound |",
        "|---|---|---|---|---|---|",
    ]
    command = " ".join(sys.argv[1:]) or "scale"
    return "\n".join(header + rows + ["", f"Command: `python tools/benchmark.py {command}`"])

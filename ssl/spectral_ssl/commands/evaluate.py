"""The evaluation commands: ``spectral-ssl knn``, ``spectral-ssl spectrum``, ``spectral-ssl
linear-fast`` and ``spectral-ssl embedding``, on a pretraining checkpoint or an exported backbone.

Each reads the dataset through the same datamodules as pretraining: the one the checkpoint was
trained on, by default (its class and settings, saved in the checkpoint; the digits for a
checkpoint that does not say), or ``--data`` as in ``spectral-ssl pretrain``; extracts features of the clean
images with the backbone in eval mode (sharded over the processes when started by torchrun),
prints its numbers and returns them.

Memory plan at ImageNet size (1.28 M training images, 2048-d features: 10.5 GB in float32).
The training features are never gathered: each process keeps its contiguous share (1/W of
them), in memory (on the GPU when there is one) while the share fits ``--memory_budget_gb``,
else in a :class:`~spectral_ssl.evaluation.features.FeatureFile` under ``--cache_dir`` that
the search (``knn``) or the classifier (``linear-fast``) reads a block at a time; the file is
deleted afterwards. The test features (50,000 x 2048: 410 MB) are gathered on every process.
Peak host memory is then the model, the test features, one block and the DataLoader workers.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from jsonargparse import ArgumentParser
from torch import Tensor, nn

from ..checkpoints import check_same_data, load_encoder, training_data
from ..data import SSLDataModule, balanced_subset
from ..distributed import rank, total_over_ranks
from ..evaluation import (
    PROTOCOLS,
    FeatureFile,
    apply_in_batches,
    covariance_spectrum,
    extract_features,
    extract_shard,
    knn_accuracy,
    linear_probe,
    spectrum_summary,
    write_spectra,
)
from ..evaluation.embedding import MapMethod, publish_embedding_map, thumbnails
from ..evaluation.linear import ProbeInit, ProbeSchedule
from ..runs import RunFolder
from .common import DEFAULT_DATA, command_parser, parse_with_default_classes, reports_bad_input


def _parser(prog: str, description: str) -> ArgumentParser:
    parser = command_parser(prog, description)
    parser.add_argument(
        "checkpoint",
        type=str,
        help="pretraining checkpoint (.ckpt) or exported backbone (backbone.safetensors / backbone.pth)",
    )
    parser.add_subclass_arguments(
        SSLDataModule, "data", required=False, help="the dataset (default: the checkpoint's own; else the digits)"
    )
    parser.add_argument(
        "--other_data",
        type=bool,
        default=False,
        help="evaluate on data of another image size or number of classes than the checkpoint's, on purpose",
    )
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", type=str, default="32", choices=["32", "bf16"], help="feature extraction")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument(
        "--memory_budget_gb",
        type=float,
        default=8.0,
        help="training features a process holds in memory (else in a file under --cache_dir)",
    )
    parser.add_argument(
        "--cache_dir",
        type=str,
        default=None,
        help="folder for features over the budget (default: the checkpoint's run folder's features/)",
    )
    return parser


def _setup(parser: ArgumentParser, args: list[str]):
    config = parse_with_default_classes(
        parser,
        args,
        {"data": DEFAULT_DATA},
        {"data": SSLDataModule},
        lambda c: {"data": training_data(c.checkpoint)[0]},
    )
    init = parser.instantiate_classes(config)
    if getattr(init.data, "index_cache", "") is None:  # reuse the pretraining run's file index
        init.data.index_cache = str(RunFolder.of_checkpoint(config.checkpoint).index)
    init.data.setup("validate")  # as a Trainer would, before reading the images
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)  # a live group's threads at exit can abort the process
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = config.device
    if device == "auto":
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if not config.other_data:
        statistics = training_data(config.checkpoint)[1]
        check_same_data(statistics, init.data.image_size, getattr(init.data, "num_classes", None), config.checkpoint)
    backbone, projector = load_encoder(config.checkpoint)
    backbone.to(device)
    if projector is not None:
        projector.to(device)
    precision = torch.bfloat16 if config.precision == "bf16" else None
    return config, init.data, backbone, projector, torch.device(device), precision


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _say(text: str) -> None:
    if _is_main():
        print(text, flush=True)


def _features(model: nn.Module, datamodule: SSLDataModule, config, device, precision):
    """(this process's share of the training features, its labels), (all test features, labels),
    seconds: the plan of the module docstring."""
    train_loader, test_loader = datamodule.knn_dataloaders(config.batch_size)
    start = time.perf_counter()
    width = getattr(model, "feature_dim", None)
    share = -(-len(train_loader.dataset) // (dist.get_world_size() if dist.is_initialized() else 1))
    store = None
    if width is None or share * width * 4 > config.memory_budget_gb * 2**30:
        folder = Path(config.cache_dir) if config.cache_dir else RunFolder.of_checkpoint(config.checkpoint).features
        store = lambda dim: FeatureFile(folder / f"train-rank{rank()}-{os.getpid()}.f32", dim)  # noqa: E731
    keep = device if device.type == "cuda" else torch.device("cpu")
    train = extract_shard(model, train_loader, device, precision, out_device=keep, store=store, progress="train")[:2]
    test = [t.to(device) for t in extract_features(model, test_loader, device, precision, progress="test")]
    return train, test, time.perf_counter() - start


def _release(features) -> None:
    if isinstance(features, FeatureFile):
        features.delete()


@reports_bad_input
def knn(args: list[str]) -> dict[str, float]:
    """kNN top-1 of a checkpoint's features, weighted (k=20, 200) and the INTL 5-NN L2 protocol.
    Returns {protocol: top-1 in [0, 1]}."""
    parser = _parser(
        "spectral-ssl knn",
        "kNN top-1 of a backbone's features: weighted (cosine, k=20 and 200, "
        "T=0.07) and the official INTL 5-NN (L2, unweighted).",
    )
    parser.add_argument("--k", type=list[int], default=[20, 200], help="k of the weighted protocol")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--backend", type=str, default="auto", choices=["auto", "faiss", "torch"])
    config, datamodule, backbone, _, device, precision = _setup(parser, args)
    (bank, bank_labels), (queries, labels), seconds = _features(backbone, datamodule, config, device, precision)
    where = "a file" if isinstance(bank, FeatureFile) else str(bank.device)
    _say(  # counts of the images in the features: unreadable files are not among them
        f"features: {total_over_ranks(len(bank))} train x {bank.shape[1]} (this process's share of "
        f"{len(bank)} in {where}), {len(queries)} test, extracted in {seconds:.1f} s"
    )
    protocols = {f"weighted k={k} T={config.temperature}": dict(k=k, temperature=config.temperature) for k in config.k}
    protocols["5-NN L2 (INTL)"] = PROTOCOLS["5-NN L2 (INTL)"]
    results = {}
    try:
        for name, options in protocols.items():
            start = time.perf_counter()
            results[name] = knn_accuracy(
                bank, bank_labels, queries, labels, backend=config.backend, sharded=True, **options
            )
            _say(f"kNN top-1, {name:<26} {100 * results[name]:6.2f}%   ({time.perf_counter() - start:.2f} s)")
    finally:
        _release(bank)
    return results


@reports_bad_input
def spectrum(args: list[str]) -> dict[str, dict[str, float]]:
    """Eigen-spectrum, effective rank and RankMe of a checkpoint's features (PNG + CSV).
    Returns {"backbone"/"embedding": summary}."""
    parser = _parser(
        "spectral-ssl spectrum",
        "Eigen-spectrum of the backbone features and of the projector's "
        "embedding (pretraining checkpoints) on the clean test images: effective rank, RankMe, "
        "condition number, and spectrum.png + spectrum.csv.",
    )
    parser.add_argument(
        "--out", type=str, default=None, help="output folder (default: spectrum/ in the checkpoint's folder)"
    )
    parser.add_argument("--split", type=str, default="test", choices=["train", "test"])
    parser.add_argument(
        "--max_images",
        type=int | None,
        default=50_000,
        help="a class-balanced subset of at most this many images of the split (null: all)",
    )
    config, datamodule, backbone, projector, device, precision = _setup(parser, args)
    indices = balanced_subset(datamodule.labels(config.split), config.max_images, getattr(datamodule, "seed", 0))
    loader = datamodule.eval_dataloader(config.split, config.batch_size, indices)
    features = {"backbone": extract_features(backbone, loader, device, precision, progress=config.split)[0]}
    if projector is not None:
        features["embedding"] = apply_in_batches(projector, features["backbone"], device)
    spectra, summaries = {}, {}
    for name, values in features.items():
        spectra[name], summaries[name] = covariance_spectrum(values), spectrum_summary(values)
        s = summaries[name]
        _say(
            f"{name:<9} dim {int(s['dim']):5d}  effective rank {s['effective_rank']:8.2f}  RankMe {s['rankme']:8.2f}  "
            f"condition number {s['condition_number']:.3g}"
        )
    if _is_main():
        checkpoint = Path(config.checkpoint).resolve()
        out = Path(config.out) if config.out else checkpoint.parent / "spectrum"
        used = len(features["backbone"])  # the images read: unreadable files are left out
        title = f"{RunFolder.of_checkpoint(checkpoint).name}/{checkpoint.name}: {config.split} split, {used:,} images"
        png, csv = write_spectra(spectra, out, title, num_samples=used, summaries=summaries)
        print(f"wrote {png} and {csv} ({used:,} images of the {config.split} split)")
    return summaries


@reports_bad_input
def linear_fast(args: list[str]) -> float:
    """Fast linear evaluation on features extracted once (the quick number). Returns top-1 in [0, 1]."""
    parser = _parser(
        "spectral-ssl linear-fast",
        "Fast linear evaluation: features of the clean images extracted "
        "once, then a linear classifier (Adam, cosine) trained on them for many epochs. The quick "
        "number; `spectral-ssl linear` runs the reportable ImageNet protocol, and --config "
        "linear_fast/intl_cifar10 (or intl_cifar100) the official INTL CIFAR protocol.",
    )
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight_decay", type=float, default=5e-6)
    parser.add_argument("--classifier_batch_size", type=int, default=4096, help="the classifier's mini-batches")
    parser.add_argument("--standardize", type=bool, default=True, help="standardize the features first")
    parser.add_argument(
        "--schedule", type=ProbeSchedule, default="cosine", help="cosine (per step) or exponential (per epoch)"
    )
    parser.add_argument("--final_lr_ratio", type=float, default=1e-4, help="the last lr, a fraction of --lr")
    parser.add_argument(
        "--init", type=ProbeInit, default="normal", help="normal: N(0, 0.01), bias 0; default: nn.Linear's own"
    )
    config, datamodule, backbone, _, device, precision = _setup(parser, args)
    (x_train, y_train), (x_test, y_test), seconds = _features(backbone, datamodule, config, device, precision)
    start = time.perf_counter()
    try:
        top1 = linear_probe(
            x_train,
            y_train.to(device),
            x_test,
            y_test,
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            batch_size=config.classifier_batch_size,
            standardize=config.standardize,
            schedule=config.schedule,
            final_lr_ratio=config.final_lr_ratio,
            init=config.init,
            sharded=True,
        )
    finally:
        _release(x_train)
    _say(
        f"linear top-1 (fast, cached features, {config.epochs} epochs): {100 * top1:.2f}%   "
        f"(extraction {seconds:.1f} s, training {time.perf_counter() - start:.1f} s)"
    )
    return top1


class _Thumbnails(nn.Module):
    """``backbone``, keeping [0, 1] thumbnails of the images it is given (:func:`thumbnails`), for
    TensorBoard's projector: the rows it keeps are the rows of the features, unreadable images
    left out of both."""

    def __init__(self, backbone: nn.Module, mean, std) -> None:
        super().__init__()
        self.backbone, self.mean, self.std, self.kept = backbone, mean, std, []

    def forward(self, images: Tensor) -> Tensor:
        self.kept.append(thumbnails(images.float().cpu(), self.mean, self.std))
        return self.backbone(images)


@reports_bad_input
def embedding(args: list[str]) -> Path:
    """A 2-D map of a checkpoint's held-out features coloured by class (t-SNE, UMAP or PCA).
    Returns the path of its CSV."""
    parser = _parser(
        "spectral-ssl embedding",
        "A 2-D map of the backbone features of held-out images, coloured by class: t-SNE (scikit-learn), UMAP "
        "(umap-learn, when installed) or PCA; embedding_map.png + embedding_map.csv, and TensorBoard (the map, "
        "and the features in its embedding projector with labels and, for images up to 64 px, thumbnails).",
    )
    parser.add_argument("--method", type=MapMethod, default="tsne")
    parser.add_argument(
        "--out", type=str, default=None, help="output folder (default: embedding/ in the checkpoint's folder)"
    )
    parser.add_argument("--split", type=str, default="test", choices=["train", "test"])
    parser.add_argument(
        "--max_images", type=int | None, default=5000, help="a class-balanced subset of this many images (null: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the map's random state (t-SNE, UMAP)")
    config, datamodule, backbone, _, device, precision = _setup(parser, args)
    indices = balanced_subset(datamodule.labels(config.split), config.max_images, getattr(datamodule, "seed", 0))
    loader = datamodule.eval_dataloader(config.split, config.batch_size, indices)
    keep = datamodule.image_size <= 64 and not dist.is_initialized()  # under torchrun a process sees its share
    model = _Thumbnails(backbone, *datamodule.eval_normalization) if keep else backbone
    features, labels = extract_features(model, loader, device, precision, progress=config.split)
    if not _is_main():
        return Path()
    from torch.utils.tensorboard import SummaryWriter

    checkpoint = Path(config.checkpoint).resolve()
    out = Path(config.out) if config.out else checkpoint.parent / "embedding"
    images = torch.cat(model.kept) if keep else None
    title = f"{RunFolder.of_checkpoint(checkpoint).name}/{checkpoint.name}: {config.method}, {len(features):,} images"
    start = time.perf_counter()
    with SummaryWriter(str(out)) as writer:
        publish_embedding_map(
            features, labels, indices if len(indices) == len(features) else torch.arange(len(features)),
            method=config.method, seed=config.seed, title=title, class_names=getattr(datamodule, "class_names", ()),
            experiment=writer, out_dir=out, images=images,
        )  # fmt: skip
    print(
        f"wrote {out / 'embedding_map.png'} and {out / 'embedding_map.csv'} ({len(features):,} images of the "
        f"{config.split} split, {config.method} in {time.perf_counter() - start:.1f} s); TensorBoard: "
        f"tensorboard --logdir {out}"
    )
    return out / "embedding_map.csv"

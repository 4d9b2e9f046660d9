"""Lightning callbacks that evaluate the representation during pretraining.

**Bounded cost.** Each monitor works on a fixed, seeded, class-balanced subset
(:func:`~spectral_ssl.data.balanced_subset`) of at most its budget of images, so what it costs
does not grow with the dataset: the kNN bank holds at most ``max_bank`` clean training images and
the held-out queries at most ``max_queries``; the spectrum and the online probe's evaluation use at
most ``max_images`` held-out images. When the monitors share one :class:`HeldOutFeatures` (the
commands give them one), the held-out features are extracted once per epoch end for all three:
the largest budget, the others take their part of it.
``every_n_epochs: 0`` turns a monitor off.

**DDP.** Extraction is sharded over the ranks; the kNN bank stays sharded (each rank holds and
searches its share, the per-rank top-k are merged: :func:`~spectral_ssl.evaluation.knn_predict`),
the bounded held-out features are gathered. Every logged metric is therefore computed identically
on every rank, and is logged without ``sync_dist``: no logging call issues a collective. (Lightning
reduces a synced metric when it is first read, and its progress bar reads metrics on rank 0 only,
so a synced metric made rank 0 issue a collective the other ranks did not: the gloo "collective
mismatch" crash at the end of an epoch.) Search runs on the training device.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..data.subsets import balanced_subset
from ..distributed import total_over_ranks, world_size
from ..spectral import full_precision
from .embedding import MapMethod, publish_embedding_map
from .features import apply_in_batches, extract_features, extract_shard
from .knn import PROTOCOLS, knn_accuracy
from .spectrum import covariance_spectrum, publish_spectra, spectrum_summary

# Lightning suggests sync_dist for epoch-level metrics under DDP; ours are equal on every rank by construction
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(knn|online|spectrum|data)/")


def _every(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Due after this epoch: every ``every_n_epochs`` epochs and after the last; never when 0."""
    if every_n_epochs <= 0:
        return False
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


def _require(datamodule, methods: tuple[str, ...], who: str) -> None:
    for method in methods:
        if not hasattr(datamodule, method):
            raise TypeError(
                f"{who} needs a datamodule with {method}(); {type(datamodule).__name__} has none "
                f"(or turn it off: every_n_epochs=0)"
            )


def _check_budget(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive number of images or null (all of them), not {value}")


class Representation(Protocol):
    """What the monitors read of a model: ``backbone`` (images (N, 3, H, W) -> features (N, D),
    with ``feature_dim`` D; all three monitors) and ``projector`` (features -> embeddings; the
    spectrum's second curve). Every :class:`~spectral_ssl.methods.SSLMethod` has both."""

    backbone: nn.Module
    projector: nn.Module


def _representation(pl_module: L.LightningModule, who: str, parts: tuple[str, ...]) -> Representation:
    """``pl_module``, refused by name when it lacks one of the ``parts`` of a
    :class:`Representation` that ``who`` reads."""
    missing = [part for part in parts if not isinstance(getattr(pl_module, part, None), nn.Module)]
    if missing:
        raise TypeError(
            f"{who} reads the model's {' and '.join(parts)}; {type(pl_module).__name__} has no "
            f"{'/'.join(missing)} (or turn the monitor off: every_n_epochs=0)"
        )
    return pl_module  # type: ignore[return-value]


class HeldOutFeatures:
    """The clean held-out images' features, shared by monitors. Each monitor states its budget
    at setup (:meth:`request`); the first to ask at an epoch end extracts, for the current (step,
    model), the balanced subset of the largest budget once, and every monitor gets the rows of its
    own subset (a prefix of the same balanced order, so a part of what was extracted).

    Every monitor starts with one of its own; the training commands give one to all of theirs
    (:meth:`share`). With a Trainer of your own, ``HeldOutFeatures.share(knn, probe, spectrum)``
    does the same (else each monitor extracts its own subset)."""

    def __init__(self) -> None:
        self.budgets: dict[str, int | None] = {}
        self.key: tuple | None = None

    @classmethod
    def share(cls, *monitors: _HeldOutMonitor) -> HeldOutFeatures:
        """One instance, given to each of ``monitors``."""
        held_out = cls()
        for monitor in monitors:
            monitor.held_out = held_out
        return held_out

    def request(self, who: str, budget: int | None) -> None:
        self.budgets[who] = budget

    @staticmethod
    def _positions(datamodule, budget: int | None) -> Tensor:
        return balanced_subset(datamodule.labels("test"), budget, getattr(datamodule, "seed", 0))

    def get(self, trainer: L.Trainer, model: nn.Module, device, budget: int | None) -> tuple[Tensor, Tensor]:
        """(features (N, D), labels (N,)) of ``model`` on at most ``budget`` held-out images of
        ``trainer``'s datamodule, on the CPU; extracted once per (trainer, datamodule, step, model)
        for all budgets."""
        budgets = list(self.budgets.values()) or [budget]
        largest = None if None in budgets else max(budgets)
        key = (id(trainer), id(trainer.datamodule), trainer.global_step, id(model), largest)
        if self.key != key:
            positions = self._positions(trainer.datamodule, largest)
            loader = trainer.datamodule.eval_dataloader("test", indices=positions)
            self.key, self.positions = key, positions
            self.features = extract_features(model, loader, device)
        wanted = self._positions(trainer.datamodule, budget)
        if len(wanted) == len(self.positions):
            return self.features
        rows = torch.searchsorted(self.positions, wanted)
        return self.features[0][rows], self.features[1][rows]


class _HeldOutMonitor(L.Callback):
    """A monitor that reads held-out features through a :class:`HeldOutFeatures` (its own, or
    one shared with other monitors)."""

    def __init__(self) -> None:
        self.held_out = HeldOutFeatures()


class RawPixels(nn.Module):
    """The images themselves as features, average-pooled to ``size`` x ``size`` when larger (a
    224 x 224 image would give 150,528 numbers; at 32 x 32, 3,072)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-1] > self.size or images.shape[-2] > self.size:
            images = F.adaptive_avg_pool2d(images, self.size)
        return images.flatten(1)


class KNNMonitor(_HeldOutMonitor):
    """kNN top-1 of the backbone's features on held-out images, in both protocols: weighted
    (cosine, ``k``, ``temperature``; logged as ``knn/top1``) and the official INTL 5-NN (L2 on
    raw features, unweighted; ``knn/top1_5nn_l2``). See :mod:`spectral_ssl.evaluation.knn`.

    The bank is a fixed, seeded, class-balanced subset of at most ``max_bank`` clean training
    images (the whole training set when it is smaller; null: always all of it), extracted with
    the model in eval mode, sharded over the ranks and never gathered; the queries at most
    ``max_queries`` held-out images, chosen the same way. At the start of fitting
    (``baselines``) it also measures, on the same bank and queries, the raw pixels (average-pooled
    to ``raw_pixels_size`` when the images are larger) and the randomly initialised network; after
    every ``every_n_epochs`` epochs (and the last) the trained one; 0 turns it off. :meth:`summary`
    prints all of them.
    """

    def __init__(
        self,
        k: int = 20,
        temperature: float | None = 0.07,
        every_n_epochs: int = 1,
        max_bank: int | None = 50_000,
        max_queries: int | None = 10_000,
        raw_pixels_size: int = 32,
        baselines: bool = True,
    ) -> None:
        super().__init__()
        _check_budget("knn.max_bank", max_bank)
        _check_budget("knn.max_queries", max_queries)
        self.k, self.temperature, self.every_n_epochs = k, temperature, every_n_epochs
        self.max_bank, self.max_queries, self.raw_pixels_size, self.baselines = (
            max_bank,
            max_queries,
            raw_pixels_size,
            baselines,
        )
        self.results: dict[str, float] = {}  # weighted protocol
        self.results_l2: dict[str, float] = {}  # 5-NN L2 protocol
        self.sizes: tuple[int, int] | None = None  # (bank, queries) of the last evaluation
        self.raw_pixels, self.raw_pixels_note = RawPixels(raw_pixels_size), ""

    @property
    def enabled(self) -> bool:
        return self.every_n_epochs > 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        _require(trainer.datamodule, ("eval_dataloader", "labels"), "KNNMonitor")
        _representation(pl_module, "KNNMonitor", ("backbone",))
        self.held_out.request("knn", self.max_queries)
        available = len(trainer.datamodule.labels("train"))
        bank = available if self.max_bank is None else min(self.max_bank, available)
        if bank < max(self.k, 5):  # refused now, not at the first epoch's end
            raise ValueError(
                f"knn.k={self.k} (and the 5-NN protocol) need a kNN bank of at least {max(self.k, 5)} "
                f"images; this one has {bank} (knn.max_bank={self.max_bank}, {available} training "
                "images): lower knn.k, raise knn.max_bank, or set knn.every_n_epochs=0"
            )

    def _record(self, name: str, model, trainer: L.Trainer, device) -> None:
        datamodule = trainer.datamodule
        bank_indices = balanced_subset(datamodule.labels("train"), self.max_bank, getattr(datamodule, "seed", 0))
        bank_loader = datamodule.eval_dataloader("train", indices=bank_indices)
        bank, bank_labels, _ = extract_shard(model, bank_loader, device, out_device=device)
        queries, query_labels = self.held_out.get(trainer, model, device, self.max_queries)
        queries = queries.to(device)
        self.sizes = (total_over_ranks(len(bank)), len(queries))  # images read: unreadable files left out
        self.results[name] = knn_accuracy(
            bank, bank_labels, queries, query_labels, k=self.k, temperature=self.temperature, sharded=True
        )
        self.results_l2[name] = knn_accuracy(
            bank, bank_labels, queries, query_labels, sharded=True, **PROTOCOLS["5-NN L2 (INTL)"]
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.enabled and self.baselines):
            return
        if "raw pixels" not in self.results:
            size = getattr(trainer.datamodule, "image_size", 0)
            if size > self.raw_pixels_size:
                self.raw_pixels_note = (
                    f" (average-pooled from {size}x{size} to {self.raw_pixels_size}x{self.raw_pixels_size})"
                )
            self._record("raw pixels", self.raw_pixels, trainer, pl_module.device)
        if "random init" not in self.results and trainer.global_step == 0:
            self._record("random init", pl_module.backbone, trainer, pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        self._record("trained", pl_module.backbone, trainer, pl_module.device)
        pl_module.log("knn/top1", self.results["trained"])  # the same on every rank: no sync_dist
        pl_module.log("knn/top1_5nn_l2", self.results_l2["trained"])

    def summary(self) -> str:
        if not self.enabled:
            return "kNN monitor off (knn.every_n_epochs=0)"
        weighted = f"cosine k={self.k}, " + ("unweighted" if self.temperature is None else f"T={self.temperature}")
        sizes = f" ({self.sizes[0]:,} bank images, {self.sizes[1]:,} queries)" if self.sizes else ""
        rows = [f"kNN top-1 on the held-out split{sizes}:  {weighted:>20}  {'5-NN L2 (INTL)':>15}"]
        rows += [
            f"  {name:<12} {100 * value:39.2f}%  {100 * self.results_l2.get(name, float('nan')):14.2f}%"
            for name, value in self.results.items()
        ]
        if self.raw_pixels_note and "raw pixels" in self.results:
            rows.append(f"  raw pixels{self.raw_pixels_note}")
        return "\n".join(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"results": dict(self.results), "results_l2": dict(self.results_l2), "sizes": self.sizes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict["results"])
        self.results_l2 = dict(state_dict.get("results_l2", {}))
        self.sizes = state_dict.get("sizes")  # the summary of a resumed, finished run still counts its images


class SpectrumMonitor(_HeldOutMonitor):
    """Every ``every_n_epochs`` epochs (0: off): the eigen-spectrum of the backbone features and of
    the projector's embedding on at most ``max_images`` clean held-out images (a class-balanced
    subset); logs ``spectrum/<features>/effective_rank``, ``rankme`` and ``condition_number``, writes
    ``spectrum.png`` + ``spectrum.csv`` to ``<folder>/epoch=<E>/`` whatever the logger (the
    training commands give the run folder's ``spectrum/``; None: no files), and adds the plot to
    TensorBoard when that is the logger. N images can show at most N - 1 directions: with
    fewer images than the embedding has dimensions, the cap is stated once at the start. The
    covariance and its eigendecomposition (float64, O(D^3): about 5.5e11 flops at D = 8192) run on
    the training device.

    At the same epochs, ``embedding_map`` (None: off) draws the backbone features of
    ``embedding_images`` of those images (at most ``max_images``; a class-balanced subset) as a 2-D
    map coloured by class (:func:`~.embedding.embedding_map`: t-SNE by default), as ``embedding_map.png`` + ``.csv``
    beside the spectrum's files and the figure ``embedding_map`` in TensorBoard; on the first
    process, on the CPU (t-SNE of 2,000 images: about 4 s on 2 cores). ``spectral-ssl embedding``
    draws it for a checkpoint, with TensorBoard's embedding projector."""

    def __init__(
        self,
        every_n_epochs: int = 5,
        max_images: int | None = 10_000,
        folder: str | None = None,
        embedding_map: MapMethod | None = "tsne",
        embedding_images: int = 2000,
    ) -> None:
        super().__init__()
        _check_budget("spectrum.max_images", max_images)
        _check_budget("spectrum.embedding_images", embedding_images)
        self.every_n_epochs, self.max_images, self.folder = every_n_epochs, max_images, folder
        self.embedding_map = embedding_map
        self.embedding_images = embedding_images if max_images is None else min(embedding_images, max_images)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.every_n_epochs <= 0:
            return
        _require(trainer.datamodule, ("eval_dataloader", "labels"), "SpectrumMonitor")
        representation = _representation(pl_module, "SpectrumMonitor", ("backbone", "projector"))
        self.held_out.request("spectrum", self.max_images)
        if self.embedding_map:
            self.held_out.request("embedding_map", self.embedding_images)
        available = len(trainer.datamodule.labels("test"))
        images = available if self.max_images is None else min(self.max_images, available)
        widths = [representation.backbone.feature_dim, getattr(representation.projector, "out_dim", 0)]
        if images <= max(widths):
            rank_zero_info(
                f"SpectrumMonitor: {images} held-out images for features of width {max(widths)}: "
                f"effective rank and RankMe are capped at {images - 1}"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        spectra, summaries, images = self.measure(trainer, pl_module)
        for name, summary in summaries.items():
            for key, value in summary.items():
                if key != "dim":
                    pl_module.log(f"spectrum/{name}/{key}", value)  # the same on every rank: no sync_dist
        if trainer.is_global_zero:
            epoch, step = trainer.current_epoch, trainer.global_step
            run = f"{Path(self.folder).parent.name}: " if self.folder else ""
            publish_spectra(
                spectra,
                summaries,
                f"{run}epoch {epoch + 1}, step {step}, {images:,} images",
                images,
                step,
                experiment=getattr(trainer.logger, "experiment", None),
                out_dir=Path(self.folder) / f"epoch={epoch}" if self.folder else None,
            )
        if self.embedding_map:
            self.draw_embedding_map(trainer, pl_module)

    def draw_embedding_map(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The embedding map of this epoch (every process extracts its part; the first draws)."""
        features, labels = self.held_out.get(trainer, pl_module.backbone, pl_module.device, self.embedding_images)
        if not trainer.is_global_zero:
            return
        epoch, datamodule = trainer.current_epoch, trainer.datamodule
        positions = HeldOutFeatures._positions(datamodule, self.embedding_images)
        run = f"{Path(self.folder).parent.name}: " if self.folder else ""
        publish_embedding_map(
            features,
            labels,
            positions if len(positions) == len(features) else torch.arange(len(features)),
            method=self.embedding_map,
            seed=getattr(datamodule, "seed", 0),
            title=f"{run}epoch {epoch + 1}, step {trainer.global_step}, {len(features):,} images, {self.embedding_map}",
            step=trainer.global_step,
            class_names=getattr(datamodule, "class_names", ()),
            experiment=getattr(trainer.logger, "experiment", None),
            out_dir=Path(self.folder) / f"epoch={epoch}" if self.folder else None,
            projector=False,
        )

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict, dict, int]:
        """(spectra, summaries, images): the eigenvalues (descending, on the CPU) and
        :func:`~.spectrum.spectrum_summary` of the backbone features and of the embedding, by name."""
        device = pl_module.device
        features, _ = self.held_out.get(trainer, pl_module.backbone, device, self.max_images)
        embedding = apply_in_batches(pl_module.projector, features, device)
        spectra, summaries = {}, {}
        for name, values in (("backbone", features), ("embedding", embedding)):
            values = values.to(device)
            spectra[name] = covariance_spectrum(values).cpu()
            summaries[name] = spectrum_summary(values, spectra[name])
        return spectra, summaries, len(features)


class OnlineLinearProbe(_HeldOutMonitor):
    """A linear classifier trained alongside pretraining on the detached backbone features of
    view 0 (the ``features`` in the training step's outputs; its own SGD optimizer, so the backbone never receives
    its gradient); logs ``online/train_top1`` every step and ``online/top1`` on at most
    ``max_images`` clean held-out images (a class-balanced subset) every ``every_n_epochs`` epochs;
    0 turns it off (no classifier is trained). Labels < 0 (STL-10's unlabeled images) are ignored.
    Its initialisation is seeded and its gradients are averaged over the ranks, so every rank holds
    the same classifier. Nothing in its step waits for the device."""

    def __init__(
        self,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        every_n_epochs: int = 1,
        max_images: int | None = 10_000,
    ) -> None:
        super().__init__()
        _check_budget("online_probe.max_images", max_images)
        self.lr, self.momentum, self.weight_decay, self.every_n_epochs = lr, momentum, weight_decay, every_n_epochs
        self.max_images = max_images
        self.classifier: nn.Linear | None = None
        self._pending_state: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.every_n_epochs <= 0:
            return
        _representation(pl_module, "OnlineLinearProbe", ("backbone",))
        self.held_out.request("online_probe", self.max_images)
        num_classes = trainer.datamodule.num_classes  # set up: Lightning sets the datamodule up first
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.classifier = nn.Linear(pl_module.backbone.feature_dim, num_classes)
        self.optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.classifier is not None:
            self.classifier.to(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        labels, features = batch[1], outputs.get("features") if isinstance(outputs, dict) else None
        if self.classifier is None or features is None or len(features) != len(labels):
            return
        known = (labels >= 0).float()  # a mask, not an index: no wait for the device
        with full_precision(features) as (features,):
            logits = self.classifier(features)
            losses = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            loss = (losses * known).sum() / known.sum().clamp(min=1)
        # under gradient accumulation the probe accumulates too, and steps when the model's optimizer stepped
        (loss / trainer.accumulate_grad_batches).backward()
        if trainer.global_step != self._step_before_batch:
            if world_size() > 1:  # keep the ranks' classifiers identical: average their gradients
                for param in self.classifier.parameters():
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= world_size()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        correct = (logits.argmax(1) == labels).float() * known
        pl_module.log("online/train_top1", correct.sum() / known.sum().clamp(min=1))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        features, labels = self.held_out.get(trainer, pl_module.backbone, pl_module.device, self.max_images)
        with torch.no_grad():
            predictions = self.classifier(features.to(pl_module.device)).argmax(1).cpu()
        self.top1 = (predictions == labels).float().mean().item()
        pl_module.log("online/top1", self.top1)  # the same on every rank: no sync_dist

    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        gradients = [p.grad for p in self.classifier.parameters()]  # None except between micro-batches
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(), "grad": gradients}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.classifier is None:  # restored before setup: apply once the classifier exists
            self._pending_state = state_dict
            return
        if state_dict:
            self.classifier.load_state_dict(state_dict["classifier"])
            self.optimizer.load_state_dict(state_dict["optimizer"])
            for param, gradient in zip(self.classifier.parameters(), state_dict.get("grad", [])):
                param.grad = gradient

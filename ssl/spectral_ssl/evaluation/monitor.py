"""Lightning callbacks that evaluate the representation during pretraining."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import world_size
from .features import apply_in_batches, extract_features
from .knn import knn_accuracy
from .spectrum import covariance_spectrum, plot_spectra, spectrum_summary


def _every(trainer: L.Trainer, every_n_epochs: int) -> bool:
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


def _require(datamodule, method: str, who: str):
    if not hasattr(datamodule, method):
        raise TypeError(f"{who} needs a datamodule with {method}(); {type(datamodule).__name__} has none")


def _held_out_features(trainer: L.Trainer, model, device, who: str):
    """(features, labels) of the datamodule's clean held-out images through ``model`` (in eval
    mode), extracted once per training step and model however many callbacks ask for them (the
    kNN monitor, the spectrum monitor and the online probe all do at an epoch's end)."""
    _require(trainer.datamodule, "knn_dataloaders", who)
    key = (trainer.global_step, id(model))
    cached = getattr(trainer, "_held_out_features", None)
    if cached is None or cached[0] != key:
        _, loader = trainer.datamodule.knn_dataloaders()
        trainer._held_out_features = cached = (key, extract_features(model, loader, device))
    return cached[1]


class KNNMonitor(L.Callback):
    """kNN top-1 of the backbone's features on the datamodule's held-out images, in both protocols:
    weighted (cosine, ``k``, ``temperature``; logged as ``knn/top1``) and the official INTL 5-NN
    (L2, unweighted; ``knn/top1_5nn_l2``). See :mod:`spectral_ssl.evaluation.knn`.

    The bank is the clean (un-augmented) training set from the datamodule's ``knn_dataloaders()``,
    extracted with the model in eval mode (sharded over the ranks under DDP). At the start of
    fitting it also measures the raw pixels and the randomly initialised network; after every
    ``every_n_epochs`` epochs (and the last) the trained one. :meth:`summary` prints all of them.
    """

    def __init__(self, k: int = 20, temperature: float | None = 0.07, every_n_epochs: int = 1) -> None:
        self.k, self.temperature, self.every_n_epochs = k, temperature, every_n_epochs
        self.results: dict[str, float] = {}  # weighted protocol
        self.results_l2: dict[str, float] = {}  # 5-NN L2 protocol

    def _record(self, name: str, model, trainer: L.Trainer, device) -> None:
        bank_loader, _ = trainer.datamodule.knn_dataloaders()
        bank, bank_labels = extract_features(model, bank_loader, device)
        queries, query_labels = _held_out_features(trainer, model, device, "KNNMonitor")
        self.results[name] = knn_accuracy(bank, bank_labels, queries, query_labels, k=self.k,
                                          temperature=self.temperature)
        self.results_l2[name] = knn_accuracy(bank, bank_labels, queries, query_labels, k=5, temperature=None,
                                             metric="l2")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _require(trainer.datamodule, "knn_dataloaders", "KNNMonitor")
        if "raw pixels" not in self.results:
            self._record("raw pixels", lambda x: x.flatten(1), trainer, pl_module.device)
        if "random init" not in self.results and trainer.global_step == 0:
            self._record("random init", pl_module.backbone, trainer, pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        self._record("trained", pl_module.backbone, trainer, pl_module.device)
        pl_module.log("knn/top1", self.results["trained"], sync_dist=True)  # equal on every rank
        pl_module.log("knn/top1_5nn_l2", self.results_l2["trained"], sync_dist=True)

    def summary(self) -> str:
        weighted = f"cosine k={self.k}, " + ("unweighted" if self.temperature is None else f"T={self.temperature}")
        rows = [f"kNN top-1 on the held-out split:  {weighted:>20}  {'5-NN L2 (INTL)':>15}"]
        rows += [f"  {name:<12} {100 * value:39.2f}%  {100 * self.results_l2.get(name, float('nan')):14.2f}%"
                 for name, value in self.results.items()]
        return "\n".join(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"results": dict(self.results), "results_l2": dict(self.results_l2)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict["results"])
        self.results_l2 = dict(state_dict.get("results_l2", {}))


class SpectrumMonitor(L.Callback):
    """Every ``every_n_epochs`` epochs: the eigen-spectrum of the backbone features and of the
    projector's embedding on the clean held-out images; logs ``spectrum/<features>/effective_rank``,
    ``rankme`` and ``condition_number`` and a log-log plot of both spectra to TensorBoard."""

    def __init__(self, every_n_epochs: int = 5) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        features, _ = _held_out_features(trainer, pl_module.backbone, pl_module.device, "SpectrumMonitor")
        embedding = apply_in_batches(pl_module.projector, features, pl_module.device)
        spectra = {}
        for name, values in (("backbone", features), ("embedding", embedding)):
            for key, value in spectrum_summary(values).items():
                if key != "dim":
                    pl_module.log(f"spectrum/{name}/{key}", value, sync_dist=True)
            spectra[name] = covariance_spectrum(values)
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_figure"):
            figure = plot_spectra(spectra, f"epoch {trainer.current_epoch + 1}")
            experiment.add_figure("spectrum", figure, global_step=trainer.global_step, close=True)


class OnlineLinearProbe(L.Callback):
    """A linear classifier trained alongside pretraining on the detached backbone features of
    view 0 (the method's ``step_features``; its own SGD optimizer, so the backbone never receives
    its gradient); logs ``online/train_top1`` every step and ``online/top1`` on the clean held-out
    images every ``every_n_epochs`` epochs. Labels < 0 (STL-10's unlabeled images) are ignored.
    Nothing in its step waits for the device."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 every_n_epochs: int = 1) -> None:
        self.lr, self.momentum, self.weight_decay, self.every_n_epochs = lr, momentum, weight_decay, every_n_epochs
        self.classifier: nn.Linear | None = None
        self._pending_state: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        num_classes = getattr(trainer.datamodule, "num_classes", None)
        if num_classes is None:
            trainer.datamodule.setup(stage)
            num_classes = trainer.datamodule.num_classes
        self.classifier = nn.Linear(pl_module.backbone.num_features, num_classes)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=self.lr, momentum=self.momentum,
                                         weight_decay=self.weight_decay)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.classifier.to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        labels, features = batch[1], getattr(pl_module, "step_features", None)
        if features is None or len(features) != len(labels):
            return
        known = (labels >= 0).float()  # a mask, not an index: no wait for the device
        with torch.autocast(pl_module.device.type, enabled=False):
            logits = self.classifier(features.float())
            losses = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            loss = (losses * known).sum() / known.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world_size() > 1:  # keep the ranks' classifiers identical: average their gradients
            for param in self.classifier.parameters():
                torch.distributed.all_reduce(param.grad)
                param.grad /= world_size()
        self.optimizer.step()
        correct = (logits.argmax(1) == labels).float() * known
        pl_module.log("online/train_top1", correct.sum() / known.sum().clamp(min=1))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _every(trainer, self.every_n_epochs):
            return
        features, labels = _held_out_features(trainer, pl_module.backbone, pl_module.device, "OnlineLinearProbe")
        with torch.no_grad():
            predictions = self.classifier(features.to(pl_module.device)).argmax(1).cpu()
        self.top1 = (predictions == labels).float().mean().item()
        pl_module.log("online/top1", self.top1, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.classifier is None:  # restored before setup: apply once the classifier exists
            self._pending_state = state_dict
            return
        if state_dict:
            self.classifier.load_state_dict(state_dict["classifier"])
            self.optimizer.load_state_dict(state_dict["optimizer"])

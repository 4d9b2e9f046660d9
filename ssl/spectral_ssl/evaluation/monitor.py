"""Lightning callbacks that evaluate the backbone during pretraining."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from .features import extract_features
from .knn import knn_accuracy


class KNNMonitor(L.Callback):
    """Weighted kNN top-1 of the backbone's features on the datamodule's held-out images.

    The bank is the clean (un-augmented) training set, extracted with the model in eval mode, as
    given by the datamodule's ``knn_dataloaders()``. At the start of fitting it also measures two
    baselines: the raw pixels and the randomly initialised network; after every ``every_n_epochs``
    epochs (and the last) the trained one, logged as ``knn/top1``. :meth:`summary` prints all three.
    """

    def __init__(self, k: int = 20, temperature: float | None = 0.07, every_n_epochs: int = 1) -> None:
        self.k, self.temperature, self.every_n_epochs = k, temperature, every_n_epochs
        self.results: dict[str, float] = {}

    def evaluate(self, model, datamodule, device: torch.device | str = "cpu") -> float:
        bank_loader, query_loader = datamodule.knn_dataloaders()
        bank, bank_labels = extract_features(model, bank_loader, device)
        queries, query_labels = extract_features(model, query_loader, device)
        return knn_accuracy(bank, bank_labels, queries, query_labels, k=self.k, temperature=self.temperature)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "knn_dataloaders"):
            raise TypeError(f"KNNMonitor needs a datamodule with knn_dataloaders(); {type(datamodule).__name__} has none")
        if "raw pixels" not in self.results:
            self.results["raw pixels"] = self.evaluate(lambda x: x.flatten(1), datamodule, pl_module.device)
        if "random init" not in self.results and trainer.global_step == 0:
            self.results["random init"] = self.evaluate(pl_module.backbone, datamodule, pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        self.results["trained"] = self.evaluate(pl_module.backbone, trainer.datamodule, pl_module.device)
        pl_module.log("knn/top1", self.results["trained"], sync_dist=True)  # equal on every rank

    def summary(self) -> str:
        protocol = f"k={self.k}, " + ("unweighted" if self.temperature is None else f"T={self.temperature}")
        rows = [f"kNN top-1 on the held-out split (cosine, {protocol}):"]
        rows += [f"  {name:<12} {100 * value:6.2f}%" for name, value in self.results.items()]
        return "\n".join(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"results": dict(self.results)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = dict(state_dict["results"])

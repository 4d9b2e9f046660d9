"""Callbacks a test hands to a command run in a subprocess (``--trainer.callbacks``, with
:data:`faults.ENV`'s ``PYTHONPATH``) to record what the run did from inside it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveViews(L.Callback):
    """Saves the views and labels of training batch ``batch`` of the first epoch, as the step
    receives them, to ``<folder>/views_rank<R>.pt`` on every rank."""

    def __init__(self, folder: str, batch: int = 0) -> None:
        self.folder, self.batch = Path(folder), batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (0, self.batch):
            views, labels = batch
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"views": [v.detach().cpu() for v in views], "labels": labels.cpu()},
                self.folder / f"views_rank{trainer.global_rank}.pt",
            )

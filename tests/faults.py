"""Faults injected from inside a run at a chosen batch, so that a test kills, signals or requeues a
run at the same point of training however loaded the machine is (no timer, no polling race).

A test passes :func:`at_batch` to a command as ``--trainer.callbacks``, and runs the command in a
subprocess whose ``PYTHONPATH`` holds this folder (:data:`ENV`). The resumed command leaves it out:
``trainer.callbacks`` may change on resume.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
}
"""The environment of a subprocess that can load :class:`SignalAtBatch` by its class path."""


class SignalAtBatch(L.Callback):
    """Sends ``signals`` (names, e.g. ``["SIGUSR1", "SIGKILL"]``), in order, to this process just
    before training batch ``batch`` (0-based, within the epoch) of epoch ``epoch``: every batch
    before it is done (steps, hooks, callbacks), nothing of it has started, as when a signal lands
    between two batches. On rank ``rank`` only, or on every rank when None. Python runs a handled
    signal's handler (Lightning's SLURM requeue writes ``hpc_ckpt_N.ckpt``) before the next
    signal is sent."""

    def __init__(self, epoch: int, batch: int, signals: list[str] = ["SIGKILL"], rank: int | None = None) -> None:  # noqa: B006
        self.epoch, self.batch, self.signals, self.rank = epoch, batch, signals, rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.rank is None or trainer.global_rank == self.rank:
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))


def at_batch(epoch: int, batch: int, *signals: str, rank: int | None = None) -> str:
    """The ``--trainer.callbacks=...`` argument that injects :class:`SignalAtBatch`."""
    init_args = {"epoch": epoch, "batch": batch, "signals": list(signals) or ["SIGKILL"], "rank": rank}
    return "--trainer.callbacks=" + json.dumps([{"class_path": "faults.SignalAtBatch", "init_args": init_args}])

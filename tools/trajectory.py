"""A shipped recipe's training, step by step, against a reference from the same start.

:func:`record_recipe` runs the recipe through its own command (``spectral-ssl pretrain --config
NAME``, shrunk by the overrides given, in float64 with every monitor off) and records, from inside
the run (:class:`TrajectoryRecorder`), the weights it starts from, the views each optimizer step is
fed, and the weights, buffers and loss after every step. :func:`compare` starts a reference from
those weights, feeds it those views and gives the largest differences after every step
(:class:`Row`). A reference is anything with the :class:`Reference` methods: the tests' plain-torch
references written from the sources' behaviour (tests/methods/test_recipes.py), or the official
INTL code itself (tools/compare_official.py).

Import it with this folder on ``sys.path`` (the recorder is given to the command by its class
path, ``trajectory.TrajectoryRecorder``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import lightning as L
from torch import Tensor

QUIET = [
    "--knn.every_n_epochs=0",
    "--spectrum.every_n_epochs=0",
    "--online_probe.every_n_epochs=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
    "--data.num_workers=0",
]
"""Monitors, progress bar and logger off: they never touch the weights, and cost time."""


@dataclass
class Record:
    """What a run did in its first steps: ``initial`` (the state_dict it started from), and per
    optimizer step the ``views`` fed, the ``states`` after it, the ``losses`` and learning rates."""

    initial: dict[str, Tensor] = field(default_factory=dict)
    views: list[list[Tensor]] = field(default_factory=list)
    states: list[dict[str, Tensor]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


class TrajectoryRecorder(L.Callback):
    """Records the first ``steps`` training steps of a run into ``TrajectoryRecorder.records[name]``
    (one batch per optimizer step: no gradient accumulation)."""

    records: ClassVar[dict[str, Record]] = {}

    def __init__(self, name: str, steps: int = 10) -> None:
        self.name, self.steps = name, steps
        self.record = self.records.setdefault(name, Record())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("the trajectory is recorded one batch per optimizer step: no gradient accumulation")
        self.record.initial = _copy(pl_module.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if len(self.record.views) < self.steps:
            self.record.views.append([view.detach().clone() for view in batch[0]])
            self.record.lrs.append(float(pl_module.optimizers().param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if len(self.record.states) < self.steps:
            self.record.states.append(_copy(pl_module.state_dict()))
            self.record.losses.append(float(outputs["loss"]))


def record_recipe(config: str, overrides: Sequence[str], output_dir: str | Path, steps: int = 10) -> Record:
    """``spectral-ssl pretrain --config <config> <overrides>`` in float64 with monitors off, its
    first ``steps`` steps recorded. The overrides shrink the run (data root, width, batch, epochs)
    and must leave the recipe's own values (schedule, optimizer, loss, layers) as they are."""
    from spectral_ssl.commands import main

    name = uuid.uuid4().hex
    recorder = [{"class_path": "trajectory.TrajectoryRecorder", "init_args": {"name": name, "steps": steps}}]
    main(
        [
            "pretrain",
            "--config",
            config,
            *overrides,
            "--trainer.precision=64-true",
            *QUIET,
            "--trainer.callbacks=" + json.dumps(recorder),
            "--output_dir",
            str(output_dir),
            "--run_name",
            name,
        ]
    )
    record = TrajectoryRecorder.records.pop(name)
    if len(record.states) < steps:
        raise ValueError(f"{config} trained {len(record.states)} steps, fewer than the {steps} to compare")
    return record


class Reference(Protocol):
    """The other side of a comparison, in our state_dict's key names."""

    def load(self, state: dict[str, Tensor]) -> None:
        """Starts from ``state`` (our keys; the reference maps them to its own)."""

    def step(self, views: list[Tensor], step: int) -> float:
        """Optimizer step ``step`` (0-based) on ``views``; returns the loss it stepped on."""

    def state(self) -> dict[str, Tensor]:
        """The reference's weights and buffers under our keys (those it has)."""


@dataclass(frozen=True)
class Row:
    """After optimizer step ``step`` (0-based): the largest absolute difference of a parameter, of
    a buffer (BatchNorm's running statistics and counts), and of the loss."""

    step: int
    parameters: float
    buffers: float
    loss: float


def differences(ours: dict[str, Tensor], theirs: dict[str, Tensor], names: set[str]) -> tuple[float, float]:
    """(largest parameter difference, largest buffer difference) over the keys both hold; ``names``:
    which keys are parameters."""
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ValueError("the reference holds none of our keys: check its key mapping")
    worst = {True: 0.0, False: 0.0}
    for key in common:
        a, b = ours[key].double(), theirs[key].double().to(ours[key].device)
        if a.shape != b.shape:
            raise ValueError(f"{key}: ours {tuple(a.shape)}, the reference's {tuple(b.shape)}")
        worst[key in names] = max(worst[key in names], float((a - b).abs().max()) if a.numel() else 0.0)
    return worst[True], worst[False]


def compare(record: Record, reference: Reference, parameter_names: set[str]) -> list[Row]:
    """Starts ``reference`` from the record's initial weights, feeds it the recorded views, and
    compares after every step (:class:`Row`)."""
    reference.load(record.initial)
    rows = []
    for step, (views, state, loss) in enumerate(zip(record.views, record.states, record.losses)):
        theirs = reference.step(views, step)
        parameters, buffers = differences(state, reference.state(), parameter_names)
        rows.append(Row(step, parameters, buffers, abs(loss - theirs)))
    return rows


def table(rows: Sequence[Row], noise: Sequence[Row] | None = None) -> str:
    """The rows as a Markdown table; ``noise``: the reference against itself with its inputs moved
    by one ulp, the round-off to read the differences against."""
    head = "| after step | parameters | buffers | loss |" + (" reference vs itself, inputs +1 ulp |" if noise else "")
    lines = [head, "|---" * (5 if noise else 4) + "|"]
    for i, row in enumerate(rows):
        line = f"| {row.step} | {row.parameters:.1e} | {row.buffers:.1e} | {row.loss:.1e} |"
        lines.append(line + (f" {noise[i].parameters:.1e} |" if noise else ""))
    return "\n".join(lines)

"""A run folder as one run: every path in it (:class:`RunFolder`), which checkpoint continues
it, and checkpoints that a kill or a full disk cannot damage.

- The folder is ``<output_dir>/<run_name>`` resolved to an absolute path, so the same run given
  relative or absolute, or moved, is the same run; ``last.ckpt`` (a relative link to the newest
  checkpoint) is replaced, never numbered (``last-v1.ckpt`` beside a stale ``last.ckpt``).
- Resuming continues the newest checkpoint of the run that loads: ``checkpoints/*.ckpt`` and
  Lightning's SLURM requeue checkpoints ``hpc_ckpt_N.ckpt`` in the run folder; a damaged newer one
  (a kill mid-write on a filesystem without atomic rename, a dangling ``last.ckpt`` link) is named
  and passed over.
- Resuming with a config that differs from the run's ``config.yaml`` is refused, naming the keys,
  except the keys in :data:`MAY_CHANGE_ON_RESUME` (:func:`config_changes`).
- Starting over (``--resume=false``) in a folder that holds a run is refused, unless
  ``--overwrite=true``, which moves the old run aside first.
- Every checkpoint is written to a temporary file in its own folder, flushed to disk and renamed
  over the target (:class:`AtomicCheckpointIO`); a failed write stops the run with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoints import unreadable_reason
from .models.factory import BackboneConfig, NormOptions, resolved_norm_act
from .optim import OptimizerConfig


@dataclass(frozen=True)
class RunFolder:
    """Every path of a run, in one place: a command builds it from ``--output_dir`` and
    ``--run_name`` (:meth:`named`) or finds the run of a checkpoint (:meth:`of_checkpoint`), and
    hands it to what writes there; nothing reads paths back out of Lightning's objects.

    ``path/``: ``config.yaml`` (the run's settings), ``checkpoints/`` (``*.ckpt``, ``last.ckpt``),
    ``hpc_ckpt_N.ckpt`` (Lightning's SLURM requeue checkpoints), TensorBoard's event files,
    ``index/`` (an ImageFolder's file index), ``spectrum/`` (per epoch), ``export/`` and
    ``features/`` (training features over an evaluation's memory budget); a linear evaluation's
    classifier runs are ``<key>/`` folders inside (:meth:`evaluation`)."""

    path: Path

    @classmethod
    def named(cls, output_dir: str | Path, run_name: str) -> RunFolder:
        return cls(Path(output_dir).expanduser().resolve() / run_name)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint or an exported backbone belongs to: the folder holding its
        ``checkpoints/`` or ``export/`` folder, else the checkpoint's own folder (an
        ``hpc_ckpt_N.ckpt``, or a file copied elsewhere)."""
        folder = Path(checkpoint).expanduser().resolve().parent
        return cls(folder.parent if folder.name in ("checkpoints", "export") else folder)

    def evaluation(self, checkpoint: str | Path) -> RunFolder:
        """The classifier run of a linear evaluation of ``checkpoint`` inside this run:
        ``<file stem>-<first 12 hex digits of its SHA-256>``, so that evaluating another
        checkpoint, or the same path rewritten, never resumes a classifier of another backbone."""
        with open(checkpoint, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return RunFolder(self.path / f"{Path(checkpoint).stem}-{digest[:12]}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def index(self) -> Path:
        return self.path / "index"

    @property
    def spectrum(self) -> Path:
        return self.path / "spectrum"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def features(self) -> Path:
        return self.path / "features"

    def checkpoint_files(self, kind: str | None = None) -> list[Path]:
        """``kind="last"``: ``checkpoints/*.ckpt``; ``"hpc"``: Lightning's SLURM requeue
        checkpoints (``hpc_ckpt_N.ckpt``, written in the run folder on SIGUSR1); None: both."""
        return [
            *(self.checkpoints.glob("*.ckpt") if kind != "hpc" else []),
            *(self.path.glob("hpc_ckpt_*.ckpt") if kind != "last" else []),
        ]

    def holds_a_run(self) -> bool:
        return any(self.checkpoints.glob("*.ckpt"))

    def move_aside(self) -> Path:
        """Renames the folder to ``<name>.replaced-<time>`` beside it and returns the new path."""
        target = self.path.with_name(f"{self.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(target)
        return target


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (read-only folder, full disk): the run stops."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but each file is written as ``.<name>.tmp-<pid>`` in the target's
    own folder (so the rename never crosses filesystems, whatever ``$TMPDIR`` is), flushed with
    ``fsync`` and renamed over the target: a reader sees the old file or the new one, never half
    of one. A write error is raised (Lightning's own IO logs a PermissionError and goes on)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {error}. Nothing after the last "
                "checkpoint is saved: free space or fix the folder's permissions, then run "
                "the same command to resume"
            ) from error


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also saves the end of training when its trigger did not:
    with ``every_n_train_steps`` (or ``train_time_interval``) Lightning saves no epoch ends, so a
    run of 44 steps checkpointed every 5 ended with ``last.ckpt`` at step 40 and its last 4 steps
    lost (and ``every_n_epochs`` cannot be combined with them)."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_global_step_saved and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


def newest_intact_checkpoint(paths: list[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest of ``paths`` that loads, and the newer ones that did not (with the reason).
    ``last.ckpt`` comes first among files of the same time (it links to or copies the newest)."""

    def newest_first(path: Path):
        return (path.stat().st_mtime_ns if path.exists() else 0, path.name == "last.ckpt")

    damaged = []
    for path in sorted(paths, key=newest_first, reverse=True):
        reason = unreadable_reason(path)
        if reason is None:
            return path, damaged
        damaged.append((path, reason))
    return None, damaged


def remove_partial_writes(folder: Path) -> list[Path]:
    """Deletes the temporary files of writes a kill interrupted (``.<name>.tmp-<pid>``); returns them."""
    removed = []
    for path in folder.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):  # a read-only folder: the next write reports it
            path.unlink()
            removed.append(path)
    return removed


NOT_THE_RUN = ("config", "run_name", "output_dir", "resume", "overwrite", "ckpt_path", "evaluate")
"""Where the run is and how this command starts it: never compared."""

MAY_CHANGE_ON_RESUME = (
    "trainer.max_epochs",
    "trainer.max_steps",  # the budget: every schedule is re-planned to end there
    "trainer.accumulate_grad_batches",  # a layout change, as data.batch_size (at an epoch's end only)
    "model.optimizer.lr",  # the schedule continues at the same epoch, re-planned
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "data.batch_size",
    "data.root",
    "data.num_workers",  # where the run goes on (a requeue on other nodes, the dataset moved)
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.callbacks",  # the user's own (an lr monitor, a fault injected by a test): they watch the run
    "knn.",
    "spectrum.",
    "online_probe.",
    "checkpoint.",  # what is watched and kept: not what is trained
    "speed.channels_last",
    "speed.compile",  # how the step runs, not what it computes
)
"""Config keys (or key prefixes) a resumed run applies from where it resumes; others must match."""


RENAMED = {"model.speed.": "speed."}
"""Keys that moved (old prefix -> new): a run's saved config is read with the new names."""


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"optimizer": {"lr": 1}}}}`` -> ``{"model.optimizer.lr": 1}``
    (the class of a section stays as ``model.class_path``)."""
    flat = {}
    for key, value in config.items():
        name = prefix if key == "init_args" else f"{prefix}{key}."
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, name))
        else:
            flat[name[:-1]] = value
    return flat


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """The keys whose values differ between a run's saved config and the current one, as
    ``"key: old -> new"``: (those that may change on resume, those that may not). A backbone's
    norm or act left unset is its architecture's own (runs saved before the unset default
    wrote ``bn``/``relu``), and an option of the backbone or optimizer groups that a config lacks
    (a saved one: added since) has its default, the behaviour the run was trained with."""
    saved = _with_added_defaults(_with_own_norm_act(_renamed(flat_config(saved))))
    current = _with_added_defaults(_with_own_norm_act(flat_config(current)))
    allowed, refused = [], []
    for key in sorted(saved.keys() | current.keys()):
        if key.split(".")[0] in NOT_THE_RUN or saved.get(key) == current.get(key) or _unrecorded(saved.get(key)):
            continue
        may_change = any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE_ON_RESUME)
        (allowed if may_change else refused).append(f"{key}: {saved.get(key)} -> {current.get(key)}")
    return allowed, refused


GROUPS = {
    "model.backbone.": BackboneConfig,
    "model.backbone.norm_options.": NormOptions,
    "model.optimizer.": OptimizerConfig,
}
"""The config groups whose options are dataclass fields: their defaults fill a saved config's gaps."""


def _with_added_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with the default of every option of a :data:`GROUPS` group it holds and lacks."""
    defaults = {
        prefix + field.name: field.default
        for prefix, group in GROUPS.items()
        if any(key.startswith(prefix) for key in flat)
        for field in dataclasses.fields(group)
        if not dataclasses.is_dataclass(field.default)
    }
    return {**defaults, **flat}


def _unrecorded(value) -> bool:
    """A saved value jsonargparse could not write (runs saved while the datamodules' default view
    recipes were dataclass instances: ``"Unable to serialize instance Augmentation(...)"``): the
    dataset's own default, which the current config says with null."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and v.startswith("Unable to serialize instance") for v in values)


def _with_own_norm_act(flat: dict[str, Any]) -> dict[str, Any]:
    name = flat.get("model.backbone.name") or BackboneConfig.name
    norm, act = resolved_norm_act(name, flat.get("model.backbone.norm"), flat.get("model.backbone.act"))
    return {**flat, "model.backbone.norm": norm, "model.backbone.act": act}


def _renamed(flat: dict[str, Any]) -> dict[str, Any]:
    def new_name(key: str) -> str:
        old = next((old for old in RENAMED if key.startswith(old)), None)
        return RENAMED[old] + key.removeprefix(old) if old else key

    return {new_name(key): value for key, value in flat.items()}


def choose_checkpoint(ckpt_path: str | None, run: RunFolder) -> Path | None:
    """``--ckpt_path``: a PATH, ``last`` (the newest intact checkpoint in ``checkpoints/``), ``hpc``
    (Lightning's SLURM requeue checkpoints), or None: the newest intact of both (a requeued job
    continues from its mid-epoch ``hpc_ckpt_N.ckpt`` when that is newer than ``last.ckpt``)."""
    if ckpt_path not in (None, "last", "hpc"):
        path = Path(ckpt_path).expanduser().resolve()
        checkpoint, damaged = newest_intact_checkpoint([path])
        if checkpoint is None:
            raise FileNotFoundError(f"--ckpt_path={ckpt_path}: {damaged[0][1]}")
        return checkpoint
    checkpoint, damaged = newest_intact_checkpoint(run.checkpoint_files(kind=ckpt_path))
    for path, reason in damaged:
        print(f"warning: checkpoint {path} is damaged ({reason}); passing over it", file=sys.stderr)
    if checkpoint is None and (damaged or ckpt_path is not None):
        where = {"last": f"in {run.checkpoints}", "hpc": f"named hpc_ckpt_N.ckpt in {run.path}"}.get(
            ckpt_path, f"in {run.path}"
        )
        raise FileNotFoundError(
            f"no intact checkpoint {where} to resume; --resume=false --overwrite=true starts over "
            "(moving the run aside)"
        )
    return checkpoint


def resumable_changes(checkpoint: Path, current: dict) -> list[str]:
    """Refuses to resume ``checkpoint`` with a config (``current``) other than the one its run was
    trained with (its run's ``config.yaml``; the command writes it again only after this check),
    but for :data:`MAY_CHANGE_ON_RESUME`, whose changes it returns."""
    saved = RunFolder.of_checkpoint(checkpoint).config
    if not saved.is_file():
        return []
    allowed, refused = config_changes(yaml.safe_load(saved.read_text()), current)
    if refused:
        raise ValueError(
            f"{checkpoint} was trained with other settings ({saved}): {'; '.join(refused)}. These "
            "cannot change within a run: drop them to resume it, or give a new --run_name to start a "
            "new run (on resume, trainer.max_epochs, trainer.max_steps, model.optimizer.lr, devices, nodes, "
            "data.batch_size and trainer.accumulate_grad_batches may change)"
        )
    return allowed

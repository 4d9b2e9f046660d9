"""A run folder as one run: where it is, which checkpoint continues it, and checkpoints that a
kill or a full disk cannot damage.

- The folder is ``<output_dir>/<run_name>`` resolved to an absolute path, so the same run given
  relative or absolute, or moved, is the same run; the checkpoint callback overwrites
  ``last.ckpt`` instead of numbering new copies (``last-v1.ckpt`` beside a stale ``last.ckpt``).
- Resuming continues the newest checkpoint in ``checkpoints/`` that loads; a damaged newer one
  (a kill mid-write on a filesystem without atomic rename) is named and passed over.
- Starting over (``--resume=false``) in a folder that holds a run is refused, unless
  ``--overwrite=true``, which moves the old run aside first.
- Every checkpoint is written to a temporary file in its own folder, flushed to disk and renamed
  over the target (:class:`AtomicCheckpointIO`); a failed write stops the run with its reason.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


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
            raise CheckpointWriteError(f"could not write checkpoint {path}: {error}. Nothing after the last "
                                       "checkpoint is saved: free space or fix the folder's permissions, then run "
                                       "the same command to resume") from error


def _loads(path: Path) -> str | None:
    """None when ``path`` is a readable checkpoint, else why not."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, foreign pickle: anything that would stop Lightning's load
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint"
    return None


def newest_intact_checkpoint(folder: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``folder`` that loads, and the newer ones that did not (with the
    reason). ``last.ckpt`` comes first among files of the same time."""
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"),
                        reverse=True)
    damaged = []
    for path in candidates:
        reason = _loads(path)
        if reason is None:
            return path, damaged
        damaged.append((path, reason))
    return None, damaged


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def move_aside(run_dir: Path) -> Path:
    """Renames the run folder to ``<name>.replaced-<time>`` beside it and returns the new path."""
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target

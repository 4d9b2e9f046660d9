"""The two kinds of loader over a data source's images: the training loader (seeded, sharded,
resumable mid-epoch from the training position it is given) and the clean evaluation loader that
the monitors, the linear protocol and the evaluation commands share."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from .views import SeededEpochSampler


class Skipped:
    """Returned by a dataset in place of a sample it could not read (see :func:`collate_skipping`)."""

    def __init__(self, path: str) -> None:
        self.path = path


def collate_skipping(samples: list) -> tuple:
    """default_collate over the readable samples, plus the list of paths that were skipped:
    ``(data, labels, skipped_paths)``. The datamodule strips the third element before the batch
    reaches the model and counts it."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [s.path for s in samples if isinstance(s, Skipped)]
    data, labels = default_collate(good) if good else (None, None)
    return data, labels, skipped


class ResumableLoader(DataLoader):
    """A training DataLoader over a :class:`~.views.SeededEpochSampler` that a checkpoint resumes
    mid-epoch, through Lightning's ``state_dict``/``load_state_dict`` interface for dataloaders.

    Its state is the position of training (``position()``: the epoch and the batches of it that
    finished their step) with the batch size and number of processes it was counted in; loading
    it (Lightning does, before the first batch is drawn) makes the sampler start that epoch after
    those batches, so a run killed at any step and resumed trains on the batches an uninterrupted
    run would have. The position comes from the trainer (:meth:`.base.ResumableDataModule.training_position`):
    the loader hands a batch out before its step, and a checkpoint can be written during the step
    (SLURM's signal), so only the training loop knows whether that batch has trained."""

    def __init__(self, *args, position: Callable[[], tuple[int, int]], accumulate: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.position, self.accumulate = position, accumulate

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.position()
        return {
            "epoch": epoch,
            "batches": batches,
            "batch_size": self.batch_size,
            "processes": self.sampler.num_replicas,
            "accumulate": self.accumulate,
        }

    @staticmethod
    def check_layout(state: dict[str, int], batch_size: int, processes: int, accumulate: int) -> None:
        """Refuses to resume a mid-epoch ``state`` with another batch size, number of processes or
        gradient accumulation (an end-of-epoch one may change them: every schedule is re-mapped)."""
        saved = (state["processes"], state["batch_size"], state.get("accumulate", 1))
        if state["batches"] and saved != (processes, batch_size, accumulate):
            raise ValueError(
                f"the checkpoint was written mid-epoch by {saved[0]} process(es) x {saved[1]} images per batch, "
                f"accumulating {saved[2]} batch(es) a step; it resumes only with the same, not {processes} x "
                f"{batch_size}, accumulating {accumulate} (resume from an end-of-epoch checkpoint to change them)"
            )

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.check_layout(state, self.batch_size, self.sampler.num_replicas, self.accumulate)
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["batches"] * self.batch_size


def training_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    position: Callable[[], tuple[int, int]],
    epoch: int = 0,
    processes: int = 1,
    rank: int = 0,
    drop_last: bool = True,
    collate_fn: Callable = collate_skipping,
    accumulate: int = 1,
) -> ResumableLoader:
    """A shuffled, seeded :class:`ResumableLoader` of ``dataset`` (indexed by ``(index, seed)``),
    this ``rank``'s shard of ``processes``, starting at ``epoch`` (Lightning sets each next one);
    ``position``: where training is (epoch, batches trained in it), for its ``state_dict``.
    ``drop_last``: every batch full (pretraining: the whitening and BatchNorm see whole batches);
    ``accumulate``: the batches of an optimizer step (in its state, for :meth:`ResumableLoader.check_layout`)."""
    sampler = SeededEpochSampler(
        dataset, num_replicas=processes, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        position=position,
        accumulate=accumulate,
    )


def evaluation_loader(dataset: Dataset, batch_size: int, num_workers: int, indices: Tensor | None = None) -> DataLoader:
    """The clean images of ``dataset`` in order, or only those at ``indices`` (ascending: files
    are then read in order); batches ``(images, labels, skipped_paths)``. Not sharded:
    :func:`~spectral_ssl.evaluation.extract_features` shards under DDP."""
    if indices is not None:
        dataset = Subset(dataset, indices.tolist())
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping)

"""Feature extraction that leaves the model exactly as it found it, sharded under DDP, into
memory or a file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..distributed import gather_rows, rank, shard_range, world_size


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Puts every submodule in eval mode (BatchNorm uses, never updates, its running statistics)
    and restores each submodule's own training flag afterwards."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags.items():
            m.training = flag


class FeatureFile:
    """(N, D) float32 features in a raw file, written batch by batch (:meth:`append`) and read back
    a slice at a time (``store[start:stop]`` gives a tensor), so host memory never holds more than
    one slice: a 1.28 M x 2048 bank is 10.5 GB on disk and a 4096-row slice (32 MB) in memory.
    Reads go through ``np.fromfile``, not a memory map, so they do not accumulate in the process's
    resident memory."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path, self.dim, self.rows = Path(path), dim, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = open(self.path, "wb")

    def append(self, rows: Tensor) -> None:
        np.ascontiguousarray(rows.detach().float().cpu().numpy()).tofile(self._writer)
        self.rows += len(rows)

    def finish(self) -> FeatureFile:
        self._writer.close()
        return self

    def __len__(self) -> int:
        return self.rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    def __getitem__(self, key: slice) -> Tensor:
        start, stop, step = key.indices(self.rows)
        if step != 1:
            raise IndexError("a FeatureFile reads contiguous slices only")
        count = max(stop - start, 0) * self.dim
        values = np.fromfile(self.path, dtype=np.float32, count=count, offset=start * self.dim * 4)
        return torch.from_numpy(values.reshape(-1, self.dim))

    def delete(self) -> None:
        self._writer.close()
        self.path.unlink(missing_ok=True)


def parameter_dtype(model) -> torch.dtype | None:
    """The floating dtype of ``model``'s parameters (bfloat16 under ``precision="bf16-true"``, which
    converts the module; float32 otherwise): what its inputs must be given in, outside Lightning's
    steps, whose batches the precision plugin converts. None for a plain function."""
    if not isinstance(model, nn.Module):
        return None
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _shard(loader: DataLoader) -> tuple[DataLoader, int]:
    """The same loader over this rank's contiguous share of the dataset (no padding, in order),
    and the share's first index."""
    start, end = shard_range(len(loader.dataset))  # type: ignore[arg-type]
    return DataLoader(
        Subset(loader.dataset, range(start, end)),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    ), start


@torch.no_grad()
def extract_shard(
    model: Callable[[Tensor], Tensor],
    loader,
    device: torch.device | str = "cpu",
    precision: torch.dtype | None = None,
    out_device: torch.device | str = "cpu",
    store: FeatureFile | Callable[[int], FeatureFile] | None = None,
    progress: str | None = None,
) -> tuple[Tensor | FeatureFile, Tensor, int]:
    """This rank's share of :func:`extract_features`, not gathered: ``(features, labels, start)``
    with ``start`` the share's first position in the loader's dataset (0 when not distributed).
    Features are float32 rows on ``out_device``, written into one preallocated tensor (no second
    copy at the end), or appended to a :class:`FeatureFile` when ``store`` is one or makes one
    from the feature width. Unreadable images are left out (the rows close up). ``progress``: a
    progress bar of the batches with that label on the first process (the commands' long
    extractions: an hour at ImageNet size on one GPU); None inside training, whose bar is Lightning's."""
    distributed = world_size() > 1 and isinstance(loader, DataLoader)
    batches, start = _shard(loader) if distributed else (loader, 0)
    total = len(batches.dataset) if isinstance(batches, DataLoader) else None  # type: ignore[arg-type]
    device, out_device, dtype = torch.device(device), torch.device(out_device), parameter_dtype(model)
    autocast = torch.autocast(device.type, dtype=precision) if precision else nullcontext()
    context = evaluating(model) if isinstance(model, nn.Module) else nullcontext()
    features, labels, parts, filled = None, [], [], 0
    with context, autocast:
        for batch in tqdm(batches, desc=progress, unit="batch", disable=progress is None or rank() != 0):
            images, target = batch[0], batch[1]
            if images is None:  # a batch of unreadable images only
                continue
            rows = model(images.to(device, dtype, non_blocking=True)).float()
            labels.append(target.cpu())
            if store is not None:
                if features is None:
                    features = store(rows.shape[1]) if callable(store) else store
                features.append(rows)
            elif total is None:  # a plain iterable of batches: its length is unknown
                parts.append(rows.to(out_device))
            else:
                if features is None:
                    features = torch.empty(total, rows.shape[1], device=out_device)
                features[filled : filled + len(rows)] = rows
            filled += len(rows)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if isinstance(features, FeatureFile):
        return features.finish(), labels, start
    if parts:
        return torch.cat(parts), labels, start
    if features is None:
        return torch.zeros(0, 0, device=out_device), labels, start
    return features[:filled], labels, start


@torch.no_grad()
def extract_features(
    model: Callable[[Tensor], Tensor],
    loader,
    device: torch.device | str = "cpu",
    precision: torch.dtype | None = None,
    progress: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Runs ``model`` in eval mode over ``(images, labels)`` batches; returns (features, labels) on
    CPU in float32, in the loader's order. Under DDP (a process group is initialized) and given a
    DataLoader, each rank extracts a contiguous share and the shares are all-gathered, so every
    rank returns the whole set: use it for bounded sets (held-out images), and
    :func:`extract_shard` for banks that one rank should hold only a share of.
    ``precision=torch.bfloat16`` runs the model under bf16 autocast; ``progress`` as in :func:`extract_shard`."""
    features, labels, _ = extract_shard(model, loader, device, precision, progress=progress)
    return gather_rows(features), gather_rows(labels)


@torch.no_grad()
def apply_in_batches(
    module: nn.Module, features: Tensor, device: torch.device | str = "cpu", batch_size: int = 4096
) -> Tensor:
    """``module`` (e.g. the projector) over already extracted (N, D) features in eval mode, batch
    by batch, so that a second head costs no second pass of the backbone; float32 on CPU."""
    dtype = parameter_dtype(module)
    with evaluating(module):
        return torch.cat([module(chunk.to(device, dtype)).float().cpu() for chunk in features.split(batch_size)])

"""Feature extraction that leaves the model exactly as it found it, sharded under DDP."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..distributed import world_size


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


class _Indexed(Dataset):
    """(image, label, index): lets the gathered shards be put back in dataset order."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return (*sample, index) if isinstance(sample, tuple) else sample  # an unreadable image's marker


def _shard(loader: DataLoader) -> DataLoader:
    """The same loader over this rank's shard only (DistributedSampler pads the last shard by
    repeating images; the duplicates are dropped after gathering)."""
    dataset = _Indexed(loader.dataset)
    collate = loader.collate_fn

    def collate_with_index(samples):
        kept = [s for s in samples if isinstance(s, tuple)]  # unreadable images come back as a marker
        indices = torch.tensor([s[-1] for s in kept])
        return (*collate([s[:-1] for s in kept])[:2], indices)

    return DataLoader(dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      sampler=DistributedSampler(dataset, shuffle=False), collate_fn=collate_with_index)


def _gather_rows(x: Tensor) -> Tensor:
    """all_gather of tensors whose first dimension differs across ranks."""
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    longest = int(max(sizes))
    padded = torch.zeros(longest, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(size)] for part, size in zip(parts, sizes)])


@torch.no_grad()
def extract_features(model: Callable[[Tensor], Tensor], loader, device: torch.device | str = "cpu",
                     precision: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Runs ``model`` in eval mode over ``(images, labels)`` batches; returns (features, labels) on
    CPU in float32, in the loader's order. Under DDP (a process group is initialized) and given a
    DataLoader, each rank extracts its shard and the shards are all-gathered, so every rank returns
    the whole set. ``precision=torch.bfloat16`` runs the model under bf16 autocast."""
    distributed = world_size() > 1 and isinstance(loader, DataLoader)
    batches = _shard(loader) if distributed else loader
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=precision) if precision else nullcontext()
    features, labels, indices = [], [], []
    context = evaluating(model) if isinstance(model, nn.Module) else nullcontext()
    with context, autocast:
        for batch in batches:
            images, target = batch[0], batch[1]
            if images is None:  # a batch of unreadable images only
                continue
            features.append(model(images.to(device, non_blocking=True)).float().cpu())
            labels.append(target.cpu())
            if distributed:
                indices.append(batch[2])
    features, labels = torch.cat(features), torch.cat(labels)
    if not distributed:
        return features, labels
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    gathered = [_gather_rows(t.to(backend_device)).cpu() for t in (features, labels, torch.cat(indices))]
    features, labels, index = gathered
    # dataset order, each image once (the padding repeated some): the first row of every index
    unique, inverse = torch.unique(index, return_inverse=True)  # unique is sorted
    first = torch.full((len(unique),), len(index)).scatter_reduce(0, inverse, torch.arange(len(index)), reduce="amin")
    return features[first], labels[first]


@torch.no_grad()
def apply_in_batches(module: nn.Module, features: Tensor, device: torch.device | str = "cpu",
                     batch_size: int = 4096) -> Tensor:
    """``module`` (e.g. the projector) over already extracted (N, D) features in eval mode, batch
    by batch, so that a second head costs no second pass of the backbone; float32 on CPU."""
    with evaluating(module):
        return torch.cat([module(chunk.to(device)).float().cpu() for chunk in features.split(batch_size)])

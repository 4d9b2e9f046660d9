"""Feature extraction that leaves the model exactly as it found it."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn


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


@torch.no_grad()
def extract_features(model: Callable[[Tensor], Tensor], batches: Iterable, device: torch.device | str = "cpu",
                     ) -> tuple[Tensor, Tensor]:
    """Runs ``model`` in eval mode over ``(images, labels)`` batches; returns (features, labels) on CPU."""
    features, labels = [], []
    context = evaluating(model) if isinstance(model, nn.Module) else nullcontext()
    with context:
        for images, target, *_ in batches:
            features.append(model(images.to(device)).float().cpu())
            labels.append(target.cpu())
    return torch.cat(features), torch.cat(labels)


@contextmanager
def nullcontext():
    yield

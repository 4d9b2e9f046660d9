"""The small training loops of the theory experiments: full-batch regression and mini-batch
classification of in-memory tensors with Adam and a cosine learning rate. Plain loops (no
Lightning) because the networks are tiny and the experiments run hundreds of them; deterministic
for a given seed on a given machine."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))


def fit_regression(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, lr: float = 1e-2) -> float:
    """Fits ``model`` to (``x`` (n, d), ``y`` (n, p)) by full-batch Adam on the mean squared
    error for ``steps`` steps, lr cosine-decayed to 0; returns the final training MSE."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = _cosine(optimizer, steps)
    model.train()
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return F.mse_loss(model.eval()(x), y).item()


def sup_and_l2_error(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """max |f(x) - y| and the root mean squared error over the points ``x`` (a dense grid, so
    the RMS approximates the L2 norm over the domain divided by the root of its volume)."""
    with torch.no_grad():
        error = model.eval()(x) - y
    return error.abs().max().item(), error.square().mean().sqrt().item()


def fit_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> float:
    """Trains ``model`` on (``x`` (n, d), integer labels ``y`` (n,)) with cross-entropy, Adam
    (lr cosine-decayed to 0 over all steps) and shuffled mini-batches drawn from ``seed``;
    returns the mean training loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(x) / batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = _cosine(optimizer, epochs * batches)
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(x), generator=generator), 0.0
        for i in range(batches):
            index = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
    return total / len(x)


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 in [0, 1] of ``model``'s argmax over (``x``, ``y``), in eval mode."""
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()

"""Optimizers and learning-rate schedules, built from torch's and timm's own classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models.norms import is_norm


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD, LARS or Adam (``name``), linear warm-up then cosine decay, stepped every iteration.

    ``lr`` is the base learning rate for a global batch of 256: the optimizer uses
    lr * (per-device batch x devices x nodes x gradient accumulation) / 256. The cosine ends at
    ``min_lr_ratio`` x that (INTL: 0.001). ``exclude_bias_and_norm`` takes biases and every
    parameter of a normalization layer out of weight decay (and so out of LARS adaptation).
    """

    name: str = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.001


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and (when excluded) biases + normalization parameters with
    weight_decay 0. Normalization layers are found by module type, not by tensor shape."""
    if not exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if is_norm(module) or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimizerConfig, lr: float | torch.Tensor,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s trainable parameters; SGD and Adam use torch's
    fused CUDA kernels when every parameter is on a GPU. For a step captured in a CUDA graph
    (``capturable``, SGD and Adam only), ``lr`` is a one-element float32 tensor on the GPU."""
    groups = parameter_groups(model, config.weight_decay, config.exclude_bias_and_norm)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, fused=fused)
    if config.name == "lars":
        from timm.optim import Lars

        # timm's LARS adapts only groups whose weight decay is non-zero (always_adapt=False).
        return Lars(groups, lr=lr, momentum=config.momentum)
    if config.name == "adam":  # W-MSE's optimizer; weight decay as L2 in the gradient, as in its code
        return torch.optim.Adam(groups, lr=lr, fused=fused, capturable=capturable)
    raise ValueError(f"unknown optimizer {config.name!r}; choose 'sgd', 'lars' or 'adam'")


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> torch.optim.lr_scheduler.LRScheduler:
    """lr_t = lr (t+1)/W for t < W, then cosine from lr to min_lr_ratio x lr at ``total_steps``."""
    base_lr = float(optimizer.param_groups[0]["lr"])
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=base_lr * min_lr_ratio)
    if warmup_steps <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0,
                                               total_iters=max(warmup_steps - 1, 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])

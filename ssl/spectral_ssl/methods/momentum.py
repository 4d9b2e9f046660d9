"""The momentum (EMA) target network of BYOL and of INTL's momentum variant."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """m_k = final - (final - base) (1 + cos(pi k / K)) / 2: ``base`` at step 0, ``final`` at the
    last step (BYOL, Grill et al. 2020; INTL's ImageNet momentum variant)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return final - (final - base) * (1 + math.cos(math.pi * progress)) / 2


class MomentumTarget(nn.Module):
    """A gradient-free copy of ``online`` modules (applied in sequence) updated by an exponential
    moving average of their parameters: theta_target <- m theta_target + (1 - m) theta_online.

    Buffers (BatchNorm running statistics) are not averaged; like the online network, the target
    normalizes with batch statistics in training. Always computes without gradients.
    """

    def __init__(self, *online: nn.Module) -> None:
        super().__init__()
        self.network = nn.Sequential(*(copy.deepcopy(module) for module in online))
        self.network.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Sequential | list[nn.Module], momentum: float) -> None:
        online_params = [p for module in online for p in module.parameters()]
        target_params = list(self.network.parameters())
        if len(online_params) != len(target_params):
            raise ValueError("the online modules do not match the target network")
        torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

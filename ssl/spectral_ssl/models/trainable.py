"""Which parameters train: everything, or only the normalization layers' affine parameters.

Training only the norm layers of a network whose other weights stay at their random
initialization is already expressive: deep ResNets reach ~82% on CIFAR-10 this way (Frankle et
al., "Training BatchNorm and Only BatchNorm", ICLR 2021), and such networks are universal
approximators (Burkholz, ICLR 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from .norms import is_norm

Trainable = Literal["all", "norm_only", "norm_and_head"]
TRAINABLE = ("all", "norm_only", "norm_and_head")


def set_trainable(backbone: nn.Module, heads: Sequence[nn.Module], mode: Trainable) -> tuple[int, int]:
    """Sets ``requires_grad``: ``all`` trains everything; ``norm_only`` only the parameters of the
    backbone's normalization layers (BN, GN, LN, PLN, LN-G, IterNorm — and PLN used as the
    activation), every other backbone weight and the heads frozen at their initial values;
    ``norm_and_head`` those plus every head parameter. Returns (trainable, total) counts."""
    if mode not in TRAINABLE:
        raise ValueError(f"unknown trainable mode {mode!r}; choose one of {', '.join(TRAINABLE)}")
    for module in backbone.modules():
        for param in module.parameters(recurse=False):
            param.requires_grad_(mode == "all" or is_norm(module))
    for head in heads:
        head.requires_grad_(mode != "norm_only")
    params = [p for m in (backbone, *heads) for p in m.parameters()]
    if mode != "all" and not any(p.requires_grad for p in backbone.parameters()):
        raise ValueError(
            f"trainable={mode!r} leaves nothing to train in the backbone: it has no normalization layers "
            "with affine parameters (norm='none'?)"
        )
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

"""Projector heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class Projector(nn.Sequential):
    """MLP projector: [Linear(no bias) - BatchNorm1d - ReLU] for each hidden width, then Linear.

    ``Projector(512, [2048, 2048], 2048)`` is the INTL / Barlow Twins CIFAR head
    (512-2048-2048-2048); the last layer keeps its bias, as in the official INTL code.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> None:
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim

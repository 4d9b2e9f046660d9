"""Projector heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class Projector(nn.Sequential):
    """MLP projector: [Linear - BatchNorm1d - ReLU] for each hidden width, then Linear (with bias).

    ``Projector(512, [2048, 2048], 2048)`` is the INTL / Barlow Twins CIFAR head
    (512-2048-2048-2048). The hidden Linear layers have no bias (``bias=False``: the official INTL
    code's, the BatchNorm after them makes one redundant) or one (``bias=True``: solo-learn's
    heads); ``batch_norm=False`` leaves the BatchNorm out (solo-learn's SimCLR head:
    Linear - ReLU - Linear). Module indices, hence state_dict keys, follow the layers.
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, bias: bool = False, batch_norm: bool = True
    ) -> None:
        layers: list[nn.Module] = []
        for width in hidden_dims:
            layers.append(nn.Linear(in_dim, width, bias=bias))
            layers += [nn.BatchNorm1d(width)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim

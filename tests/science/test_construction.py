"""The width-3 LN-Net construction classifies random labellings perfectly."""

import pytest
import torch
from torch import nn

from spectral_ssl.science.construction import DIGITS, construct, verify


@pytest.mark.parametrize("m, classes", [(8, 2), (16, 2), (32, 2), (16, 5), (32, 10)])
def test_construction_classifies_random_labels(m, classes):
    generator = torch.Generator().manual_seed(m + classes)
    x, y = torch.randn(m, 6, generator=generator), torch.randint(0, classes, (m,), generator=generator)
    net = construct(x, y)
    assert net.ln_layers == 1 + m - len(y.unique())  # one LN layer to the circle, one per merge
    assert verify(net, x, y) == 1.0
    assert verify(net, x, y, digits=DIGITS) == 1.0
    module = net.module()
    layers = [type(m) for m in module]
    assert layers == [nn.Linear, nn.LayerNorm] * net.ln_layers + [nn.Linear]
    assert all(m.out_features == 3 for m in module[:-1] if isinstance(m, nn.Linear))  # width 3 throughout


def test_duplicate_points_are_refused():  # with different labels no function separates them
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="meet along the projection"):
        construct(x, torch.tensor([0, 1, 0]))

"""The nonlinearity measures against closed forms and another computation (scipy)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from spectral_ssl.models.norms import GroupedLayerNorm
from spectral_ssl.science.nonlinearity import hessian_norm, layer_norm_hessian_norm, lssr, ssr


def test_an_affine_map_has_no_curvature():
    layer = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3))
    assert hessian_norm(layer, torch.randn(10, 6)).abs().max().item() == 0


def test_hessian_of_squares():
    # f_i(x) = x_i^2: d^2 f_i / dx_i^2 = 2, every other entry 0: ||D^2 f||_F = 2 sqrt(d)
    values = hessian_norm(lambda x: x.square(), torch.randn(5, 7))
    torch.testing.assert_close(values, torch.full((5,), 2 * 7**0.5, dtype=torch.float64))


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_layer_norm_hessian_matches_its_closed_form(groups):
    x = torch.randn(20, 12, dtype=torch.float64)
    ln = GroupedLayerNorm(12, num_groups=groups, eps=0.0, affine=False, channels_last=True)
    torch.testing.assert_close(hessian_norm(ln, x), layer_norm_hessian_norm(x, 12 // groups), rtol=1e-9, atol=1e-9)
    if groups == 1:  # torch's own LayerNorm, the same closed form sqrt(3 d (d - 2)) / ||x - mean||^2
        torch_ln = nn.LayerNorm(12, eps=0.0, elementwise_affine=False)
        r2 = (x - x.mean(1, keepdim=True)).square().sum(1)
        torch.testing.assert_close(hessian_norm(torch_ln, x), (3 * 12 * 10) ** 0.5 / r2, rtol=1e-9, atol=0)


def test_ssr_by_hand():
    x1 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # SS = 2
    x2 = torch.tensor([[0.0, 4.0], [2.0, 4.0]])  # SS = 2; pooled mean (1, 2): SS = 4 x (1 + 4) = 20
    assert ssr(x1, x2) == pytest.approx(4 / 20)
    assert ssr(x1, x1 + 1e-9) == pytest.approx(1.0)


def two_classes(n=200, d=5, shift=0.7):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator) + shift


def test_lssr_is_the_smallest_generalized_eigenvalue():
    x1, x2 = two_classes()
    both = torch.cat([x1, x2]).double().numpy()
    total = np.cov(both.T, bias=True) * len(both)
    within = sum(np.cov(x.double().numpy().T, bias=True) * len(x) for x in (x1, x2))
    reference = scipy.linalg.eigh(within, total, eigvals_only=True).min()
    assert lssr(x1, x2) == pytest.approx(reference, rel=1e-10)
    # and it is the SSR along that direction: a 1-D linear map attains it
    vector = torch.from_numpy(scipy.linalg.eigh(within, total)[1][:, 0])
    assert ssr(x1.double() @ vector[:, None], x2.double() @ vector[:, None]) == pytest.approx(reference, rel=1e-9)


def test_no_affine_map_goes_below_lssr():
    x1, x2 = (x.double() for x in two_classes())
    bound = lssr(x1, x2)
    generator = torch.Generator().manual_seed(0)
    for k in (1, 2, 5, 8):
        w, b = torch.randn(5, k, generator=generator, dtype=torch.float64), torch.randn(k, generator=generator)
        assert ssr(x1 @ w + b, x2 @ w + b) >= bound - 1e-12
        assert lssr(x1 @ w + b, x2 @ w + b) >= bound - 1e-9  # a linear layer cannot lower it
    invertible = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    assert lssr(x1 @ invertible, x2 @ invertible) == pytest.approx(bound, rel=1e-9)


def test_lssr_extremes():
    generator = torch.Generator().manual_seed(1)
    few = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)  # 6 points in R^8
    assert lssr(*few) == pytest.approx(0, abs=1e-9)  # any labelling of <= d + 1 points is linearly separable
    same = torch.randn(400, 3, generator=generator)
    assert lssr(same, same.clone()) == pytest.approx(1.0)

"""The INTL objective against the same formula written out in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from spectral_ssl.losses import INTLLoss, intl_trace_weight
from test_spectral import reference_whitening


def reference_intl(views, iters=4):
    """1/(V-1) sum_i [ (2 - 2 mean cos(w_i, w_0)) + beta (TL(w_i) + TL(w_0)) ], float64."""
    n = views[0].shape[0]
    beta = 0.01 * (math.log2(n) - 3)
    white = [reference_whitening(v.double(), iters) for v in views]

    def tl(w):
        var = ((w - w.mean(1, keepdim=True)) ** 2).sum(1) / (w.shape[1] - 1)
        return ((var - 1) ** 2).sum()

    total = 0.0
    for i in range(1, len(white)):
        cos = (F.normalize(white[i], dim=1) * F.normalize(white[0], dim=1)).sum(1).mean()
        total = total + (2 - 2 * cos) + beta * (tl(white[i]) + tl(white[0]))
    return total / (len(white) - 1)


@pytest.mark.parametrize("num_views", [2, 4])
def test_intl_loss_equals_formula(num_views):
    views = [torch.randn(32, 64) for _ in range(num_views)]
    out = INTLLoss()(views)
    torch.testing.assert_close(out["loss"].double(), reference_intl(views), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], out["alignment"] + out["trace_weight"] * out["trace"])


def test_trace_weight_rule():
    assert intl_trace_weight(256, 2048) == pytest.approx(0.05)
    assert intl_trace_weight(64, 8192, axis=1) == pytest.approx(0.10)
    with pytest.raises(ValueError, match="trace_weight"):
        intl_trace_weight(8, 2048)
    out = INTLLoss(trace_weight=0.5)([torch.randn(8, 16), torch.randn(8, 16)])
    assert out["trace_weight"] == pytest.approx(0.5)


def test_gradients_flow_to_every_view():
    views = [torch.randn(16, 32, requires_grad=True) for _ in range(3)]
    INTLLoss()(views)["loss"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)


# --- Baselines, each against its formula written out in float64 ---------------------------------

from spectral_ssl.losses import BarlowTwinsLoss, NTXentLoss, VICRegLoss  # noqa: E402


def test_barlow_twins_equals_formula():
    a, b = torch.randn(32, 16, dtype=torch.float64), torch.randn(32, 16, dtype=torch.float64)
    standardize = lambda x: (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)  # noqa: E731
    c = standardize(a).T @ standardize(b) / 32
    expected = sum((1 - c[i, i]) ** 2 for i in range(16))
    expected = expected + 0.0051 * sum(c[i, j] ** 2 for i in range(16) for j in range(16) if i != j)
    torch.testing.assert_close(BarlowTwinsLoss()([a, b])["loss"], expected)


def test_vicreg_equals_formula():
    a, b = torch.randn(32, 16, dtype=torch.float64), torch.randn(32, 16, dtype=torch.float64) * 0.5
    invariance = ((a - b) ** 2).mean()

    def variance(x):
        return torch.clamp(1 - torch.sqrt(x.var(0) + 1e-4), min=0).mean()

    def covariance(x):
        cov = torch.cov(x.T)
        return (cov ** 2).sum() - (torch.diagonal(cov) ** 2).sum()

    expected = 25 * invariance + 25 * (variance(a) + variance(b)) / 2 + (covariance(a) + covariance(b)) / 16
    torch.testing.assert_close(VICRegLoss()([a, b])["loss"], expected)


def test_nt_xent_equals_formula():
    a, b = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    z = torch.cat([a, b])
    z = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(16):
        positive = (i + 8) % 16
        others = [torch.exp(z[i] @ z[k] / 0.5) for k in range(16) if k != i]
        total = total - torch.log(torch.exp(z[i] @ z[positive] / 0.5) / sum(others))
    torch.testing.assert_close(NTXentLoss(temperature=0.5)([a, b])["loss"], total / 16)


def test_st_loss_is_alignment_of_transformed_views():
    from spectral_ssl.losses import STLoss
    from spectral_ssl.spectral import spectral_transform

    views = [torch.randn(32, 8, dtype=torch.float64) for _ in range(3)]
    out = STLoss(power=-0.25)(views)
    t = [spectral_transform(v, -0.25) for v in views]
    expected = sum(2 - 2 * F.cosine_similarity(t[i], t[0]).mean() for i in (1, 2)) / 2
    torch.testing.assert_close(out["loss"], expected)
    # with p = -1/2, the Newton form and a trace weight, it is INTL in feature-whitening form
    st = STLoss(power=-0.5, method="newton", trace_weight=0.05)(views)
    torch.testing.assert_close(st["loss"], INTLLoss(axis=1, trace_weight=0.05)(views)["loss"])

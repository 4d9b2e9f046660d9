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

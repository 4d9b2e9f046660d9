"""The INTL objective against the same formula written out in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from spectral_ssl.losses import INTLLoss, intl_trace_weight


def reference_intl(reference_whitening, views, iters=4):
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
def test_intl_loss_equals_formula(num_views, reference_whitening):
    views = [torch.randn(32, 64) for _ in range(num_views)]
    out = INTLLoss()(views)
    torch.testing.assert_close(out["loss"].double(), reference_intl(reference_whitening, views), rtol=1e-5, atol=1e-5)
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
        return (cov**2).sum() - (torch.diagonal(cov) ** 2).sum()

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


# --- W-MSE, BYOL, the momentum variant of INTL -----------------------------------------------------

from spectral_ssl.losses import BYOLLoss, WMSELoss, cholesky_whitening  # noqa: E402


def zca_whitening(x):
    """Reference whitening through an eigendecomposition (float64): Xc Sigma^-1/2."""
    xc = x - x.mean(0)
    values, vectors = torch.linalg.eigh(xc.T @ xc / (x.shape[0] - 1))
    return xc @ vectors @ torch.diag(values**-0.5) @ vectors.T


def reference_cholesky(x):
    """W-MSE's whitening written out: Xc (L^-1)^T with L L^T = Cov(X) (unbiased)."""
    return (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T


def test_cholesky_whitening_whitens_and_differs_from_zca_by_a_rotation():
    x = torch.randn(64, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    w = cholesky_whitening(x)
    torch.testing.assert_close(w, reference_cholesky(x))
    torch.testing.assert_close(torch.cov(w.T), torch.eye(8, dtype=torch.float64))
    rotation = torch.linalg.lstsq(zca_whitening(x), w).solution  # w = zca(x) R with R orthogonal
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(zca_whitening(x) @ rotation, w)


def test_wmse_equals_formula_over_its_sub_batches():
    views = [torch.randn(64, 8, dtype=torch.float64) for _ in range(3)]
    loss = WMSELoss(w_size=32, w_iter=2, seed=5)
    out = loss(views)["loss"]
    generator = torch.Generator().manual_seed(5 * 1_000_003)  # first call
    total = 0.0
    for _ in range(2):
        chunks = torch.randperm(64, generator=generator).view(2, 32)
        for i in range(3):
            for j in range(i + 1, 3):
                for chunk in chunks:  # nmse over the whole batch = mean over equal-sized chunks
                    a, b = reference_cholesky(views[i][chunk]), reference_cholesky(views[j][chunk])
                    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
                    total = total + (2 - 2 * cos.mean()) / 2
    torch.testing.assert_close(out, total / (2 * 3))
    assert int(loss.calls) == 1  # the next call draws new sub-batches, reproducibly after a resume


def test_wmse_rejects_a_singular_sub_batch():
    with pytest.raises(ValueError, match="w_size"):
        WMSELoss(w_size=16)([torch.randn(64, 32), torch.randn(64, 32)])


def test_byol_loss_equals_symmetrized_formula_and_stops_target_gradients():
    p = [torch.randn(16, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    t = [torch.randn(16, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    cos = lambda x, y: ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).mean()  # noqa: E731
    expected = (2 - 2 * cos(p[0], t[1])) + (2 - 2 * cos(p[1], t[0]))
    out = BYOLLoss()(p, t)["loss"]
    torch.testing.assert_close(out, expected)
    out.backward()
    assert p[0].grad is not None and t[0].grad is None


def test_multi_crop_intl_is_the_sum_over_pairs_with_view_zero():
    views = [torch.randn(32, 16) for _ in range(5)]  # 2 global + 3 small crops
    loss = INTLLoss(trace_weight=0.05)
    pairs = [loss([views[0], views[i]])["loss"] for i in range(1, 5)]
    torch.testing.assert_close(loss(views)["loss"], sum(pairs) / 4)


def test_momentum_intl_uses_a_gradient_free_key_and_query_trace_only(reference_whitening):
    queries = [torch.randn(32, 16, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    key = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    out = INTLLoss(trace_weight=0.05)(queries, key=key)
    white_key = reference_whitening(key.detach(), 4)

    def tl(w):
        var = ((w - w.mean(1, keepdim=True)) ** 2).sum(1) / (w.shape[1] - 1)
        return ((var - 1) ** 2).sum()

    expected = 0.0
    for q in queries:
        w = reference_whitening(q, 4)
        expected = expected + (2 - 2 * F.cosine_similarity(w, white_key).mean()) + 0.05 * tl(w)
    torch.testing.assert_close(out["loss"], expected / 3)
    out["loss"].backward()
    assert key.grad is None and all(q.grad is not None for q in queries)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name",
    ["intl", "intl_feature_whitening", "st_eigh", "st_newton", "barlow_twins", "vicreg", "nt_xent", "wmse", "byol"],
)
def test_every_loss_takes_half_precision_embeddings(name, dtype):
    """bf16-true / ``.half()`` models hand the losses bf16 / fp16 embeddings: each loss computes in
    float32 (finite, equal to the float32 loss of the same values to float32 round-off) and returns
    gradients in the embeddings' dtype."""
    from spectral_ssl.losses import (
        BarlowTwinsLoss,
        BYOLLoss,
        INTLLoss,
        NTXentLoss,
        STLoss,
        VICRegLoss,
        WMSELoss,
    )

    make = {
        "intl": lambda: INTLLoss(gather=False),
        "intl_feature_whitening": lambda: INTLLoss(axis=1, gather=False),
        "st_eigh": lambda: STLoss(gather=False),
        "st_newton": lambda: STLoss(method="newton", gather=False),
        "barlow_twins": lambda: BarlowTwinsLoss(gather=False),
        "vicreg": lambda: VICRegLoss(gather=False),
        "nt_xent": lambda: NTXentLoss(gather=False),
        "wmse": lambda: WMSELoss(w_size=32, gather=False),
        "byol": BYOLLoss,
    }[name]
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(32, 16, generator=generator).to(dtype).requires_grad_() for _ in range(2)]
    call = (lambda zs: make()(zs, [z.detach() for z in zs])) if name == "byol" else (lambda zs: make()(zs))
    loss = call(views)["loss"]
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, call([v.detach().float() for v in views])["loss"], rtol=1e-4, atol=1e-5)
    for view in views:
        assert view.grad.dtype == dtype and torch.isfinite(view.grad.float()).all()

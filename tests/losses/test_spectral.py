"""IterNorm against independent float64 references (eigendecomposition, the official recurrence)."""

import pytest
import torch

from spectral_ssl.spectral import iternorm, trace_loss


def well_conditioned(n, d, dtype=torch.float64):
    return torch.randn(n, d, dtype=dtype) @ (torch.eye(d, dtype=dtype) + 0.1 * torch.randn(d, d, dtype=dtype))


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("iters", [1, 4, 7])
def test_matches_closed_form_of_the_iteration(axis, iters, reference_whitening):
    z = well_conditioned(24, 40)
    expected = reference_whitening(z, iters, axis=axis)
    torch.testing.assert_close(iternorm(z, iters, axis=axis), expected, rtol=1e-9, atol=1e-9)


def test_official_recurrence_in_matrix_form():
    """The official code: P <- 1.5 P - 0.5 P^3 Sigma_N from P = I, output P Xc / sqrt(tr)."""
    z = torch.randn(16, 40, dtype=torch.float64)
    x = z - z.mean(1, keepdim=True)
    sigma = x @ x.T / 39
    p = torch.eye(16, dtype=torch.float64)
    for _ in range(4):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (sigma / sigma.trace())
    torch.testing.assert_close(iternorm(z), p @ x / sigma.trace().sqrt())


@pytest.mark.parametrize("axis", [0, 1])
def test_many_iterations_whiten_to_identity(axis):
    # Converged well before the plain Newton–Schulz iteration starts to drift (it diverges when
    # run far past convergence, see REFERENCES), so 10 iterations on a well-conditioned batch.
    n, d = (16, 48) if axis == 0 else (64, 12)
    z = well_conditioned(n, d)
    out = iternorm(z, iters=10, axis=axis)
    cov = out @ out.T / (d - 1) if axis == 0 else out.T @ (out - out.mean(0)) / (n - 1)
    torch.testing.assert_close(cov, torch.eye(cov.shape[0], dtype=torch.float64), rtol=0, atol=1e-4)
    # ...and then the trace loss, whose target is that identity, vanishes.
    assert trace_loss(out, axis=axis) < 1e-6


def test_eps_mixes_in_identity_as_official(reference_whitening):
    z = well_conditioned(12, 20)
    torch.testing.assert_close(iternorm(z, 4, eps=0.1), reference_whitening(z, 4, eps=0.1))


def test_gradcheck_float64():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: iternorm(t, iters=3), (z,))
    assert torch.autograd.gradcheck(lambda t: iternorm(t, iters=3, axis=1), (z,))


def test_bf16_under_autocast_is_float32_accurate(reference_whitening):
    z = torch.randn(32, 64)
    z_bf16 = z.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = iternorm(z_bf16)
    assert out.dtype == torch.float32
    expected = reference_whitening(z_bf16.double(), 4)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_rank_deficient_batch_is_finite(axis):
    base = torch.randn(4, 32)
    z = torch.cat([base, base, base[:2]]).requires_grad_(True)  # 10 rows, rank 4, duplicates
    out = iternorm(z, axis=axis)
    (out.square().sum() + trace_loss(out, axis=axis)).backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


def test_trace_loss_formula():
    z = torch.randn(8, 6, dtype=torch.float64)
    v_rows = ((z - z.mean(1, keepdim=True)) ** 2).sum(1) / 5
    v_cols = ((z - z.mean(0)) ** 2).sum(0) / 7
    torch.testing.assert_close(trace_loss(z, axis=0), ((v_rows - 1) ** 2).sum())
    torch.testing.assert_close(trace_loss(z, axis=1), ((v_cols - 1) ** 2).sum())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="axis"):
        iternorm(torch.randn(4, 4), axis=2)
    with pytest.raises(ValueError, match="batch, dim"):
        iternorm(torch.randn(4, 4, 4))


# --- The N x N ("batch") and D x D ("feature") forms give the same whitening (issue #5) ----------


def grouped_reference(reference_whitening, z, iters, eps, groups):
    """Feature whitening of each group of D/G features on its own, float64 eigendecomposition."""
    return torch.cat([reference_whitening(part, iters, eps, axis=1) for part in z.chunk(groups, dim=1)], dim=1)


def rank_deficient(n, d):
    base = torch.randn(n // 3, d, dtype=torch.float64)
    return torch.cat([base, base, base, base[: n - 3 * (n // 3)]])


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("shape", [(12, 40), (40, 12)])
@pytest.mark.parametrize("make", [well_conditioned, rank_deficient])
def test_both_forms_equal_reference_and_each_other(axis, eps, shape, make, reference_whitening):
    z = make(*shape).requires_grad_(True)
    weights = torch.randn(shape, dtype=torch.float64)
    outputs, grads = [], []
    for form in ("batch", "feature", "auto"):
        out = iternorm(z, 4, eps, axis=axis, form=form)
        (grad,) = torch.autograd.grad((out * weights).sum(), z)
        outputs.append(out)
        grads.append(grad)
    expected = reference_whitening(z.detach(), 4, eps, axis=axis)
    for out, grad in zip(outputs, grads):
        torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(grad, grads[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("form", ["batch", "feature"])
def test_grouped_feature_whitening(form, reference_whitening):
    z = well_conditioned(10, 24)
    out = iternorm(z, 4, 0.01, axis=1, groups=3, form=form)
    torch.testing.assert_close(out, grouped_reference(reference_whitening, z, 4, 0.01, 3), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("form", ["batch", "feature"])
def test_forms_agree_in_float32_under_bf16_autocast(form, reference_whitening):
    z = torch.randn(64, 256).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = iternorm(z, axis=1, form=form)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_whitening(z.double(), 4, axis=1), rtol=0, atol=2e-5)


def test_auto_picks_the_smaller_gram_matrix(monkeypatch):
    import spectral_ssl.spectral as spectral

    sizes = []
    original = spectral.newton_schulz
    monkeypatch.setattr(spectral, "newton_schulz", lambda s, iters: sizes.append(s.shape) or original(s, iters))
    iternorm(torch.randn(8, 64), axis=1, groups=2)  # D x D per group would be 32 x 32
    iternorm(torch.randn(64, 8), axis=1)  # N x N would be 64 x 64
    iternorm(torch.randn(8, 64), axis=0)  # sample whitening: N x N is the smaller
    assert sizes == [(2, 8, 8), (1, 8, 8), (1, 8, 8)]


# --- The spectral transformation family ---------------------------------------------------------

from spectral_ssl.spectral import spectral_transform  # noqa: E402


def zca_reference(z, power, eps, axis):
    z = z.double()
    if axis == 1:
        zc = z - z.mean(0)
        lam, u = torch.linalg.eigh(zc.T @ zc / (z.shape[0] - 1))
        return zc @ u @ torch.diag((lam.clamp_min(0) + eps) ** power) @ u.T
    xc = z - z.mean(1, keepdim=True)
    lam, u = torch.linalg.eigh(xc @ xc.T / (z.shape[1] - 1))
    return u @ torch.diag((lam.clamp_min(0) + eps) ** power) @ u.T @ xc


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
@pytest.mark.parametrize("power", [-0.5, 0.5, -0.25, 1.0])
def test_spectral_transform_equals_the_eigendecomposition_of_the_stated_covariance(axis, shape, power):
    z = well_conditioned(*shape)
    expected = zca_reference(z, power, 1e-5, axis)
    torch.testing.assert_close(spectral_transform(z, power, axis=axis), expected, rtol=1e-7, atol=1e-9)


def test_power_minus_half_is_zca_whitening():
    z = well_conditioned(200, 16)
    out = spectral_transform(z, -0.5, eps=0.0)
    torch.testing.assert_close(torch.cov(out.T), torch.eye(16, dtype=torch.float64), atol=1e-9, rtol=0)
    # ZCA: the whitening matrix is symmetric, so the output stays closest to the input
    zc = z - z.mean(0)
    w = torch.linalg.lstsq(zc, out).solution
    torch.testing.assert_close(w, w.T, atol=1e-8, rtol=0)
    torch.testing.assert_close(spectral_transform(z, 0.0, eps=0.0), zc)


def test_eigh_and_newton_agree():
    z = well_conditioned(64, 16)
    exact = spectral_transform(z, -0.5, eps=0.0)
    torch.testing.assert_close(spectral_transform(z, -0.5, method="newton", iters=10), exact, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="power=-0.5 only"):
        spectral_transform(z, 0.5, method="newton")


def test_spectral_transform_float32_under_autocast_and_gradients():
    z = torch.randn(64, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = spectral_transform(z.bfloat16(), -0.5)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_spectral_transform_of_a_rank_deficient_batch_without_eps(axis):
    z = rank_deficient(30, 20).requires_grad_(True)  # rank 10
    out = spectral_transform(z, -0.5, eps=0.0, axis=axis)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
    # whitened within its span: the non-zero eigenvalues of the output covariance are all 1
    cov = out.T @ out / 29 if axis == 1 else out @ out.T / 19
    eigenvalues = torch.linalg.eigvalsh(cov.detach())
    torch.testing.assert_close(eigenvalues[eigenvalues > 1e-6], torch.ones(10 - (axis == 1), dtype=torch.float64))

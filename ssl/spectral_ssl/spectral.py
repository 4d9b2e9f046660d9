"""Spectral transformations of a batch of embeddings.

IterNorm whitening (Huang et al., CVPR 2019) as used by INTL ("Modulate Your Spectrum in
Self-Supervised Learning", Weng et al., ICLR 2024) and the trace loss that goes with it.

And the spectral transformation (ST) family of the same paper: the covariance's spectrum mapped
through lambda -> lambda^p, of which whitening is p = -1/2.

Everything here runs in float32 (float64 stays float64), also under bf16/fp16 autocast: the
Newton–Schulz iteration and the trace normalisation lose all accuracy in half precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

Form = Literal["auto", "batch", "feature"]
Side = Literal["auto", "rows", "columns"]


def full_precision_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, float32) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@contextmanager
def full_precision(*tensors: Tensor, dtype: torch.dtype | None = None) -> Iterator[list[Tensor]]:
    """Autocast off for the block, and ``tensors`` cast to ``dtype`` (default
    :func:`full_precision_dtype`): ``with full_precision(a, b) as (a, b): ...`` is how every
    statistic that half precision would ruin (whitening, covariances, losses) is computed."""
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        yield [t.to(dtype or full_precision_dtype(t)) for t in tensors]


def newton_schulz(sigma_n: Tensor, iters: int) -> Tensor:
    """P_T of the plain (uncoupled) Newton–Schulz iteration for sigma_n^{-1/2}.

    P_0 = I, P_{k+1} = 1.5 P_k - 0.5 P_k^3 sigma_n  (batched over leading dimensions).
    Converges to sigma_n^{-1/2} when the spectrum of sigma_n lies in (0, 1], i.e. after
    trace normalisation. Every P_k is a polynomial in sigma_n.
    """
    eye = torch.eye(sigma_n.shape[-1], dtype=sigma_n.dtype, device=sigma_n.device)
    p = eye.expand_as(sigma_n)
    for _ in range(iters):
        p = torch.baddbmm(p, torch.linalg.matrix_power(p, 3), sigma_n, beta=1.5, alpha=-0.5)
    return p


def whiten_rows(x: Tensor, scale: float, *, iters: int, eps: float, side: Side = "auto") -> Tensor:
    """IterNorm of the rows of ``x`` (shape ``(G, a, b)``): returns ``P_T(S_N) x / sqrt(tr S)``.

    ``S = (1 - eps) * scale * x x^T + eps * I_a`` is the a x a covariance, ``S_N = S / tr S``.

    Since every Newton–Schulz iterate is a polynomial f of S, and f(c x x^T + e I_a) x
    = x f(c x^T x + e I_b), the same result comes from the b x b Gram matrix; only the trace
    keeps the a x a identity's ``eps * a``. ``side`` picks the matrix that is iterated on:
    ``"rows"`` the a x a one, ``"columns"`` the b x b one, ``"auto"`` the smaller, so the cost
    is O(a b min(a, b) + T min(a, b)^3) instead of O(a^2 b + T a^3).
    """
    if side not in ("auto", "rows", "columns"):
        raise ValueError(f"side must be 'auto', 'rows' or 'columns', got {side!r}")
    a, b = x.shape[-2], x.shape[-1]
    use_rows = side == "rows" or (side == "auto" and a <= b)
    trace = (1.0 - eps) * scale * x.square().sum(dim=(-2, -1)) + eps * a
    trace = trace.reshape(-1, 1, 1)
    if use_rows:
        gram = x @ x.transpose(-2, -1)
    else:
        gram = x.transpose(-2, -1) @ x
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    sigma_n = ((1.0 - eps) * scale * gram + eps * eye) / trace
    p = newton_schulz(sigma_n, iters)
    out = p @ x if use_rows else x @ p
    return out * trace.rsqrt()


def iternorm(
    z: Tensor,
    iters: int = 4,
    eps: float = 0.0,
    *,
    axis: int = 0,
    groups: int = 1,
    form: Form = "auto",
) -> Tensor:
    """IterNorm whitening of a batch of embeddings ``z`` of shape (N, D), as in INTL.

    ``axis=0`` (the official INTL default, behind all published numbers): each sample is centred
    over its features, ``Xc = Z - rowmean(Z)``, and the N x N covariance
    ``Sigma = Xc Xc^T / (D - 1)`` is whitened: ``Zhat = P_T Xc / sqrt(tr Sigma)`` with
    ``P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2``, ``P_0 = I``, ``Sigma_N = Sigma / tr Sigma``.

    ``axis=1``: the D x D feature covariance ``Zc^T Zc / (N - 1)`` of the paper's equations
    (features centred over the batch), whitened the same way; ``groups`` splits the D features
    into that many equal groups whitened independently (as the IterNorm layer does; the
    official INTL code uses one group). ``form`` names the matrix iterated on: ``"batch"`` the
    N x N one, ``"feature"`` the D x D one (per group), ``"auto"`` the smaller.

    Choices of the official code (winci-ai/INTL ``methods/whitening.py``, ``cfg.py``): T = 4
    iterations, eps = 0 (``Sigma = (1 - eps) Sigma + eps I`` when set), unbiased covariance,
    one group, plain autograd through the iterations, no running statistics. The result is
    identical whichever of the two Gram matrices is iterated on (see :func:`whiten_rows`), so the
    cost follows min(N, D) rather than the dimension the paper writes the covariance in.

    Computed in float32 (float64 inputs stay float64) with autocast disabled; differentiable.
    """
    if z.ndim != 2:
        raise ValueError(f"iternorm expects a (batch, dim) tensor, got shape {tuple(z.shape)}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (N x N sample whitening) or 1 (D x D feature whitening), got {axis}")
    n, d = z.shape
    if form not in ("auto", "batch", "feature"):
        raise ValueError(f"form must be 'auto', 'batch' (N x N) or 'feature' (D x D), got {form!r}")
    if axis == 0 and groups != 1:
        raise ValueError("groups applies to feature whitening (axis=1) only")
    if d % groups:
        raise ValueError(f"dim {d} is not divisible into groups={groups}")
    with full_precision(z) as (z,):
        if axis == 0:
            if d < 2:
                raise ValueError("sample whitening (axis=0) needs at least 2 features")
            xc = z - z.mean(dim=1, keepdim=True)
            side = {"auto": "auto", "batch": "rows", "feature": "columns"}[form]
            return whiten_rows(xc.unsqueeze(0), 1.0 / (d - 1), iters=iters, eps=eps, side=side).squeeze(0)
        if n < 2:
            raise ValueError("feature whitening (axis=1) needs a batch of at least 2")
        zc = z - z.mean(dim=0, keepdim=True)
        x = zc.T.reshape(groups, d // groups, n)  # (G, D/G, N): rows are features
        side = {"auto": "auto", "batch": "columns", "feature": "rows"}[form]
        out = whiten_rows(x, 1.0 / (n - 1), iters=iters, eps=eps, side=side)
        return out.reshape(d, n).T


def trace_loss(z_hat: Tensor, *, axis: int = 0) -> Tensor:
    """INTL's trace loss: sum_i (v_i - 1)^2 over the diagonal of the whitened covariance.

    ``axis=0``: v_i = ||zhat_i - mean(zhat_i)||^2 / (D - 1), one term per sample (N terms).
    ``axis=1``: v_j is the unbiased variance of feature j over the batch (D terms).
    Summed, not averaged, as in the official code; O(N D) either way.
    """
    with full_precision(z_hat) as (z_hat,):
        dim = 1 if axis == 0 else 0
        centred = z_hat - z_hat.mean(dim=dim, keepdim=True)
        variance = centred.square().sum(dim=dim) / (z_hat.shape[dim] - 1)
        return (variance - 1.0).square().sum()


def spectral_transform(
    z: Tensor,
    power: float = -0.5,
    *,
    method: Literal["eigh", "newton"] = "eigh",
    axis: int = 1,
    eps: float = 1e-5,
    iters: int = 4,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Spectral transformation ST_p: the centred embedding with its covariance's spectrum mapped
    through lambda -> lambda^p (Weng et al., ICLR 2024, Sec. 3): with Sigma = U diag(lambda) U^T,

        axis=1 (features):  Zhat = Zc U diag((lambda + eps)^p) U^T,   Sigma = Zc^T Zc / (N - 1)  (D x D)
        axis=0 (samples):   Zhat = U diag((lambda + eps)^p) U^T Xc,   Sigma = Xc Xc^T / (D - 1)  (N x N)

    p = -1/2 is ZCA whitening, p = 0 only centres, p = 1/2 the covariance's square root.
    ``method="eigh"``: exact, ``torch.linalg.eigh`` of the smaller Gram matrix (the function of
    Zc Zc^T applied to Zc equals Zc times the same function of Zc^T Zc), in ``dtype`` (float64 by
    default for accuracy; gradients through eigh grow large where eigenvalues nearly coincide, the
    usual caveat of eigendecomposition-based whitening). ``eps`` (1e-5) is added to every
    eigenvalue; for p < 0 it bounds the gain of near-null directions, and exactly null directions
    (rank-deficient batches, where the data has no component) get 0, as a pseudo-inverse would.
    ``method="newton"`` exists
    for p = -1/2 only: IterNorm with ``iters`` iterations, trace-normalized and without eps (see
    :func:`iternorm`), which equals the eigh result in the limit of many iterations.
    """
    if z.ndim != 2:
        raise ValueError(f"spectral_transform expects a (batch, dim) tensor, got shape {tuple(z.shape)}")
    if method == "newton":
        if power != -0.5:
            raise ValueError(f"the Newton (IterNorm) form exists for power=-0.5 only, got {power}; use method='eigh'")
        return iternorm(z, iters, axis=axis)
    if method != "eigh":
        raise ValueError(f"method must be 'eigh' or 'newton', got {method!r}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (samples) or 1 (features), got {axis}")
    out_dtype = full_precision_dtype(z)
    with full_precision(z, dtype=dtype or torch.float64) as (z,):
        if axis == 0:
            x, scale = z - z.mean(dim=1, keepdim=True), 1.0 / (z.shape[1] - 1)  # rows are samples
        else:
            x, scale = (z - z.mean(dim=0, keepdim=True)).T, 1.0 / (z.shape[0] - 1)  # rows are features
        # f(c x x^T) x = x f(c x^T x) for f(l) = (l + eps)^p, with f(0) = eps^p on null directions
        # of the larger side, which x (a rows x cols matrix) never reaches.
        small_side_rows = x.shape[0] <= x.shape[1]
        lam, vectors = torch.linalg.eigh(scale * (x @ x.T if small_side_rows else x.T @ x))
        factor = (lam.clamp_min(0) + eps).pow(power)
        if power < 0:  # x has no component along null directions: give them 0, not eps^p (inf at eps=0)
            null = lam <= lam.max() * max(x.shape) * torch.finfo(lam.dtype).eps
            factor = torch.where(null, torch.zeros_like(factor), factor)
        if small_side_rows:
            out = (vectors * factor) @ (vectors.T @ x)
        else:
            out = (x @ vectors) * factor @ vectors.T
        out = out if axis == 0 else out.T
        return out.to(out_dtype)


def cholesky_whitening(z: Tensor, eps: float = 0.0) -> Tensor:
    """W-MSE's whitening of (N, D) rows: Zc L^-T with L L^T = (1 - eps) Cov(Z) + eps I (Cholesky,
    unbiased covariance), so the output's covariance is the identity (Ermolov et al., ICML 2021)."""
    dtype = full_precision_dtype(z)
    zc = z.to(dtype) - z.to(dtype).mean(0)
    eye = torch.eye(z.shape[1], dtype=dtype, device=z.device)
    cov = (1 - eps) * (zc.T @ zc) / (z.shape[0] - 1) + eps * eye
    lower = torch.linalg.cholesky(cov)
    # rows: L^-1 zc_i, i.e. Zc L^-T
    return torch.linalg.solve_triangular(lower, zc.T, upper=False).T

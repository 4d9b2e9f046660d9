"""The eigen-spectrum of an embedding and the ranks read off it."""

from __future__ import annotations

import torch
from torch import Tensor


def covariance_spectrum(features: Tensor) -> Tensor:
    """Eigenvalues (descending, float64, clamped at 0) of the covariance of (N, D) features."""
    x = features.double()
    x = x - x.mean(dim=0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def effective_rank(eigenvalues: Tensor) -> float:
    """exp of the Shannon entropy of the normalized spectrum p_i = lambda_i / sum lambda
    (Roy & Vetterli, 2007): D for an isotropic spectrum, 1 for a rank-one one."""
    p = eigenvalues.double().clamp_min(0)
    p = p / p.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()

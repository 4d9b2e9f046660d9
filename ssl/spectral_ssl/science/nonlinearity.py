"""How nonlinear a layer is: the LN paper's measure and a plain one anyone can check.

- :func:`hessian_norm`: the Frobenius norm of the second derivative of a map f: R^d -> R^p at
  points x, computed in float64 by autograd (``torch.func.hessian``). Zero for every affine map;
  for LayerNorm without epsilon (y = sqrt(d) (x - mean x) / ||x - mean x||) it has the closed form
  ||D^2 y(x)||_F = sqrt(3 d (d - 2)) / ||x - mean x||^2 (tested), so on inputs of a fixed scale it
  grows with the number of normalized groups: LN-G with g groups of s = d / g entries sums g such
  blocks, sum_g 3 s (s - 2) / ||x_g - mean x_g||^4.
- :func:`ssr` and :func:`lssr`: the LN paper's own measure (Ni et al., "On the Nonlinearity of
  Layer Normalization", ICML 2024): the sum of squares ratio of two classes, and its lower bound
  over every linear map, which no linear network can go below and an LN-Net can. Written from the
  paper's description (its abstract and reviews of it; the body text was not reachable here):
  see their docstrings for the exact definitions used.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


def hessian_norm(f: Callable[[Tensor], Tensor] | nn.Module, points: Tensor) -> Tensor:
    """||D^2 f(x)||_F for each row x of ``points`` (n, d): the square root of the sum over every
    output i and input pair (j, k) of (d^2 f_i / dx_j dx_k)^2, in float64 (``f``, if a module, is
    copied to float64; ``points`` converted). Returns (n,) float64. Cost: n d^2 p second
    derivatives (vectorized over the points with ``torch.func.vmap``)."""
    if isinstance(f, nn.Module):
        f = copy.deepcopy(f).double().eval()

    def one(x: Tensor) -> Tensor:
        return f(x.unsqueeze(0)).squeeze(0)

    hessians = torch.func.vmap(torch.func.hessian(one))(points.to(torch.float64))  # (n, p, d, d)
    return hessians.flatten(1).norm(dim=1).detach()


def layer_norm_hessian_norm(points: Tensor, group_size: int | None = None) -> Tensor:
    """The closed form of :func:`hessian_norm` for LayerNorm with eps = 0 and no affine over
    contiguous groups of ``group_size`` entries (None: one group, LN): sqrt(sum over groups of
    3 s (s - 2) / ||x_g - mean x_g||^4), s the group size. Returns (n,) float64."""
    x = points.to(torch.float64)
    s = group_size or x.shape[1]
    groups = x.reshape(len(x), -1, s)
    r2 = (groups - groups.mean(-1, keepdim=True)).square().sum(-1)
    return (3 * s * (s - 2) / r2.square()).sum(-1).sqrt()


def _scatter(x: Tensor) -> Tensor:
    centred = x - x.mean(0)
    return centred.T @ centred


def scatter_ratio(x1: Tensor, x2: Tensor) -> Tensor:
    """:func:`ssr` as a differentiable tensor in the inputs' dtype (a training loss)."""
    both = torch.cat([x1, x2])
    within = (x1 - x1.mean(0)).square().sum() + (x2 - x2.mean(0)).square().sum()
    return within / (both - both.mean(0)).square().sum()


def ssr(x1: Tensor, x2: Tensor) -> float:
    """Sum of squares ratio of two classes (n1, d), (n2, d): (SS(x1) + SS(x2)) / SS(x1 u x2), SS
    the sum of squared distances to the set's mean. In [0, 1]: 1 when the class means coincide,
    0 when each class is a single point; lower is more separable. Computed in float64."""
    return scatter_ratio(x1.to(torch.float64), x2.to(torch.float64)).item()


def lssr(x1: Tensor, x2: Tensor, rtol: float = 1e-10) -> float:
    """The linear-invariant lower bound of :func:`ssr`: min over every affine map W x + b of
    SSR(W x1, W x2). For a map to R^k, SSR = tr(W S_W W^T) / tr(W S_T W^T) (S_W: within-class,
    S_T: total scatter), a ratio of sums no smaller than its smallest 1-D ratio, so the minimum is
    the smallest generalized eigenvalue of S_W v = lambda S_T v (Fisher's criterion), taken over
    the span of the data (directions of zero total scatter carry nothing; ``rtol`` relative to
    the largest eigenvalue of S_T). A linear (affine) layer f never lowers it: LSSR(f(x1), f(x2))
    >= LSSR(x1, x2); a lower value after a layer is that layer's nonlinearity at work. 0 when each
    class lies in its own one of two parallel hyperplanes (always so for n1 + n2 <= d + 1 points in
    general position); 1 when the class means coincide. Computed in float64."""
    x1, x2 = x1.to(torch.float64), x2.to(torch.float64)
    total = _scatter(torch.cat([x1, x2]))
    within = _scatter(x1) + _scatter(x2)
    values, vectors = torch.linalg.eigh(total)
    keep = values > rtol * values.max()
    whiten = vectors[:, keep] / values[keep].sqrt()
    return torch.linalg.eigvalsh(whiten.T @ within @ whiten).min().clamp(0, 1).item()

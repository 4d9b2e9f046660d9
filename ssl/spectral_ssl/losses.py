"""Self-supervised objectives as small ``nn.Module``s, each usable on its own.

A loss takes the projector outputs of V >= 2 views (each a (batch, dim) tensor) and returns a
dict whose ``"loss"`` entry is the scalar to minimise and whose other entries are its parts,
for logging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import gather_with_grad
from .seeding import mix_seeds
from .spectral import Form, cholesky_whitening, full_precision, iternorm, spectral_transform, trace_loss


def normalized_mse(a: Tensor, b: Tensor) -> Tensor:
    """2 - 2 * mean_i cos(a_i, b_i): the MSE between L2-normalised rows."""
    return 2.0 - 2.0 * F.cosine_similarity(a, b, dim=-1).mean()


def intl_trace_weight(batch_size: int, dim: int, axis: int = 0) -> float:
    """The official coefficient rule beta = 0.01 * (log2(N) - 3) (axis=1: log2(D) instead of N).

    0.05 at N = 256. It is not positive for N <= 8, where the rule is meaningless; say so.
    """
    size = batch_size if axis == 0 else dim
    beta = 0.01 * (math.log2(size) - 3)
    if beta <= 0:
        what = "global batch" if axis == 0 else "embedding dim"
        raise ValueError(
            f"INTL's trace-loss weight 0.01 * (log2({what}) - 3) is {beta:g} <= 0 for {what} {size}; "
            "use a larger batch or set trace_weight explicitly"
        )
    return beta


class SpectralAlignmentLoss(nn.Module):
    """The shape shared by INTL and the ST family: each view's embedding is transformed over the
    global batch (all-gathered with gradients unless ``gather=False``), then

        L = 1/(V-1) * sum_{i=1}^{V-1} [ nmse(zhat_i, zhat_0) + beta * (TL(zhat_i) + TL(zhat_0)) ]

    with nmse = 2 - 2 mean cos and TL the trace loss (:func:`spectral_ssl.spectral.trace_loss`):
    with multi-crop (V > 2 views, each whitened on its own, so crops of different resolutions
    never share statistics) every crop is paired with view 0, as in the official code.
    Momentum variant (``key`` = the EMA encoder's embedding of view 0, gradient-free): the V
    ``embeddings`` are all queries and L = 1/V sum_i [ nmse(zhat_i, khat) + beta TL(zhat_i) ].
    Returns ``loss``, ``alignment`` (the mean nmse), ``trace`` (the mean TL term, so
    loss = alignment + beta * trace) and ``trace_weight``. Subclasses define :meth:`transform`.
    """

    def __init__(self, axis: int, trace_weight: float | None, gather: bool) -> None:
        super().__init__()
        self.axis, self.trace_weight, self.gather = axis, trace_weight, gather

    def transform(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def default_trace_weight(self, batch_size: int, dim: int) -> float:
        raise NotImplementedError

    def forward(self, embeddings: Sequence[Tensor], key: Tensor | None = None) -> dict[str, Tensor]:
        if key is None and len(embeddings) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 views, got {len(embeddings)}")
        if self.gather:
            embeddings = [gather_with_grad(z) for z in embeddings]
            key = None if key is None else gather_with_grad(key)
        n, d = embeddings[0].shape
        beta = self.trace_weight if self.trace_weight is not None else self.default_trace_weight(n, d)
        transformed = [self.transform(z) for z in embeddings]
        if key is None:  # view 0 is the anchor and takes part in the trace terms of every pair
            anchor, queries = transformed[0], transformed[1:]
        else:  # momentum variant: a gradient-free anchor, trace loss on the queries alone
            with torch.no_grad():
                anchor, queries = self.transform(key), transformed
        # (trace terms first: the order in which autograd accumulates gradients changes the last
        # bits, and the figures in the README were measured with this order)
        if beta:
            anchor_trace = trace_loss(anchor, axis=self.axis) if key is None else 0.0
            trace = sum(trace_loss(q, axis=self.axis) + anchor_trace for q in queries) / len(queries)
        else:
            trace = torch.zeros((), device=anchor.device)
        alignment = sum(normalized_mse(q, anchor) for q in queries) / len(queries)
        return {
            "loss": alignment + beta * trace,
            "alignment": alignment.detach(),
            "trace": trace.detach(),
            "trace_weight": anchor.new_full((), float(beta)),  # on the device: logging it never copies
        }


class INTLLoss(SpectralAlignmentLoss):
    """INTL: IterNorm whitening of each view + normalized MSE + trace loss (Weng et al., ICLR 2024).

    The transform is :func:`spectral_ssl.spectral.iternorm` (T = 4, eps = 0, sample whitening
    ``axis=0`` by default, as the official code) and beta = 0.01 (log2 N - 3) with N the global
    batch (axis=1: log2 D) unless ``trace_weight`` is given; see :class:`SpectralAlignmentLoss`.
    Whitening, trace loss and alignment run in float32 under autocast. ``gather=False`` whitens
    each rank's local batch instead (per-GPU statistics).
    """

    def __init__(
        self,
        iters: int = 4,
        eps: float = 0.0,
        axis: int = 0,
        trace_weight: float | None = None,
        gather: bool = True,
        form: Form = "auto",
    ) -> None:
        super().__init__(axis, trace_weight, gather)
        self.iters, self.eps, self.form = iters, eps, form

    def transform(self, z: Tensor) -> Tensor:
        return iternorm(z, self.iters, self.eps, axis=self.axis, form=self.form)

    def default_trace_weight(self, batch_size: int, dim: int) -> float:
        return intl_trace_weight(batch_size, dim, self.axis)

    def extra_repr(self) -> str:
        return f"iters={self.iters}, eps={self.eps}, axis={self.axis}, trace_weight={self.trace_weight}"


class STLoss(SpectralAlignmentLoss):
    """The spectral transformation family (Weng et al., ICLR 2024, Sec. 3): each view's embedding
    through ST_p (:func:`spectral_ssl.spectral.spectral_transform`, the covariance's spectrum mapped
    by lambda -> lambda^p; p = -1/2 is whitening), then normalized MSE between the views, plus
    ``trace_weight`` x the trace loss (0 by default: the plain ST objective). Feature covariance
    (``axis=1``) by default, as in the paper's equations.
    """

    def __init__(
        self,
        power: float = -0.5,
        method: str = "eigh",
        axis: int = 1,
        eps: float = 1e-5,
        iters: int = 4,
        trace_weight: float = 0.0,
        gather: bool = True,
    ) -> None:
        super().__init__(axis, trace_weight, gather)
        self.power, self.method, self.eps, self.iters = power, method, eps, iters

    @property
    def host_sync(self) -> str | None:
        """Why a call waits for the host (None: it never does): the eigendecomposition does."""
        if self.method == "eigh":
            return "STLoss(method='eigh') (the eigendecomposition waits for the host; method='newton' does not)"
        return None

    def transform(self, z: Tensor) -> Tensor:
        return spectral_transform(z, self.power, method=self.method, axis=self.axis, eps=self.eps, iters=self.iters)

    def extra_repr(self) -> str:
        return f"power={self.power}, method={self.method!r}, axis={self.axis}, trace_weight={self.trace_weight}"


def _off_diagonal(matrix: Tensor) -> Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class _TwoViewLoss(nn.Module):
    """What the two-view losses share: exactly two views, all-gathered across ranks with gradients
    (unless ``gather=False``), computed in full precision with autocast off; subclasses define
    :meth:`pair_loss` on the two (global batch, dim) tensors."""

    def __init__(self, gather: bool) -> None:
        super().__init__()
        self.gather = gather

    def pair_loss(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, embeddings: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(embeddings) != 2:
            raise ValueError(f"{type(self).__name__} takes exactly 2 views, got {len(embeddings)}")
        if self.gather:
            embeddings = [gather_with_grad(z) for z in embeddings]
        with full_precision(*embeddings) as (a, b):
            return self.pair_loss(a, b)


class BarlowTwinsLoss(_TwoViewLoss):
    """Barlow Twins (Zbontar et al., ICML 2021):
    L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, C = Za^T Zb / N with each feature of Za, Zb
    standardized over the global batch (biased variance, eps 1e-5: the official BatchNorm1d(affine=False)
    under SyncBN); lambda = 0.0051; the whole x ``scale`` (solo-learn's ``scale_loss``). Embeddings are
    all-gathered with gradients; float32 under autocast.
    """

    def __init__(self, lambd: float = 0.0051, gather: bool = True, scale: float = 1.0) -> None:
        super().__init__(gather)
        self.lambd, self.scale = lambd, scale

    def pair_loss(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        a = F.batch_norm(a, None, None, training=True, eps=1e-5)
        b = F.batch_norm(b, None, None, training=True, eps=1e-5)
        c = a.T @ b / a.shape[0]
        on_diagonal = (torch.diagonal(c) - 1).square().sum()
        off_diagonal = _off_diagonal(c).square().sum()
        return {
            "loss": self.scale * (on_diagonal + self.lambd * off_diagonal),
            "on_diagonal": on_diagonal.detach(),
            "off_diagonal": off_diagonal.detach(),
        }


class VICRegLoss(_TwoViewLoss):
    """VICReg (Bardes et al., ICLR 2022): 25 * invariance + 25 * variance + 1 * covariance, with
    invariance = MSE(Za, Zb), variance = mean_j relu(1 - sqrt(Var(z_j) + 1e-4)) averaged over the two
    views (the paper's code; ``variance_over_views="sum"``: summed, solo-learn's), covariance = sum of
    squared off-diagonal covariances / D summed over the views (unbiased).
    Embeddings are all-gathered with gradients (the official code gathers for variance and
    covariance; the invariance term has the same value either way); float32 under autocast.
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gather: bool = True,
        variance_over_views: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__(gather)
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.variance_views = 2 if variance_over_views == "mean" else 1

    def pair_loss(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        invariance = F.mse_loss(a, b)
        n, d = a.shape
        a, b = a - a.mean(0), b - b.mean(0)
        variance = sum(F.relu(1 - torch.sqrt(x.var(0) + 1e-4)).mean() for x in (a, b)) / self.variance_views
        covariance = sum(_off_diagonal(x.T @ x / (n - 1)).square().sum() / d for x in (a, b))
        loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        return {
            "loss": loss,
            "invariance": invariance.detach(),
            "variance": variance.detach(),
            "covariance": covariance.detach(),
        }


class NTXentLoss(_TwoViewLoss):
    """NT-Xent, SimCLR's contrastive loss (Chen et al., ICML 2020): over the 2N L2-normalized
    embeddings of the global batch (all-gathered with gradients, so every other image of every
    rank is a negative), the cross-entropy of each sample's positive (its other view) against all
    2N - 1 others, similarities divided by ``temperature``, averaged over the 2N samples.
    """

    def __init__(self, temperature: float = 0.1, gather: bool = True) -> None:
        super().__init__(gather)
        self.temperature = temperature

    def pair_loss(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        z = F.normalize(torch.cat([a, b]), dim=1)
        n = a.shape[0]
        logits = z @ z.T / self.temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return {"loss": F.cross_entropy(logits, targets)}


class WMSELoss(nn.Module):
    """W-MSE (Ermolov et al., "Whitening for Self-Supervised Representation Learning", ICML 2021).

    The global batch of N images (all-gathered with gradients) is split, ``w_iter`` times, into
    random sub-batches of ``w_size`` images; within each sub-batch every view is whitened on its
    own by :func:`cholesky_whitening`; the loss is the normalized MSE (2 - 2 mean cos) over all
    pairs of views, averaged over pairs and repetitions:

        L = 1/(w_iter * P) sum_{r} sum_{i<j} nmse(W_r(z_i), W_r(z_j)),   P = V (V-1) / 2,

    with ``symmetric=False`` the second of each pair detached, nmse(W_r(z_i), sg(W_r(z_j))) (solo-learn's
    ``wmse_loss_func``: the same value, half the paths for the gradient).

    The sub-batch permutations are drawn from (``seed``, number of calls so far), the count being a
    buffer saved in checkpoints: every rank of a DDP run draws the same ones (the result equals one
    process over the whole batch) and a resumed run draws the ones it would have drawn.
    ``w_size`` must divide N and exceed the embedding width (else the covariance is singular).
    """

    host_sync = "W-MSE (it draws its sub-batch permutations on the host every call)"
    """Why a call waits for the host (see :class:`spectral_ssl.engine.CUDAGraphStrategy`)."""

    def __init__(
        self,
        w_size: int = 128,
        w_iter: int = 1,
        eps: float = 0.0,
        gather: bool = True,
        seed: int = 0,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        self.w_size, self.w_iter, self.eps, self.gather, self.seed = w_size, w_iter, eps, gather, seed
        self.symmetric = symmetric
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, embeddings: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(embeddings) < 2:
            raise ValueError(f"WMSELoss needs at least 2 views, got {len(embeddings)}")
        if self.gather:
            embeddings = [gather_with_grad(z) for z in embeddings]
        with full_precision(*embeddings) as embeddings:
            n, d = embeddings[0].shape
            if n % self.w_size or self.w_size <= d:
                raise ValueError(
                    f"W-MSE: w_size={self.w_size} must divide the global batch {n} and exceed the "
                    f"embedding width {d}; set model.w_size accordingly"
                )
            generator = torch.Generator().manual_seed(mix_seeds(self.seed, int(self.calls)))
            self.calls += 1
            total, pairs = 0.0, 0
            for _ in range(self.w_iter):
                order = torch.randperm(n, generator=generator).to(embeddings[0].device)
                white = [torch.empty_like(z) for z in embeddings]
                for index in order.view(-1, self.w_size):
                    for w, z in zip(white, embeddings):
                        w[index] = cholesky_whitening(z[index], self.eps)
                for i in range(len(white)):
                    for j in range(i + 1, len(white)):
                        second = white[j] if self.symmetric else white[j].detach()
                        total, pairs = total + normalized_mse(white[i], second), pairs + 1
            return {"loss": total / pairs}


class BYOLLoss(nn.Module):
    """BYOL's objective (Grill et al., NeurIPS 2020): the online network's predictions p_i regress
    the target network's projections t_j of the other views,

        L = sum_{i != j} nmse(p_i, stopgrad(t_j)),   nmse = 2 - 2 mean cos,

    i.e. the symmetrized loss for two views (p_0 vs t_1 plus p_1 vs t_0). Per-sample, so nothing is
    gathered across ranks. ``forward(predictions, targets)``, one tensor per view in each.
    """

    def forward(self, predictions: Sequence[Tensor], targets: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(predictions) != len(targets) or len(predictions) < 2:
            raise ValueError(
                f"BYOLLoss needs as many predictions as targets, at least 2 (got {len(predictions)} and {len(targets)})"
            )
        with full_precision(*predictions, *(t.detach() for t in targets)) as tensors:
            predictions, targets = tensors[: len(predictions)], tensors[len(predictions) :]
            loss = sum(normalized_mse(p, t) for i, p in enumerate(predictions) for j, t in enumerate(targets) if i != j)
        return {"loss": loss}

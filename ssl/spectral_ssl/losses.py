"""Self-supervised objectives as small ``nn.Module``s, each usable on its own.

A loss takes the projector outputs of V >= 2 views (each a (batch, dim) tensor) and returns a
dict whose ``"loss"`` entry is the scalar to minimise and whose other entries are its parts,
for logging.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import gather_with_grad
from .spectral import Form, iternorm, trace_loss


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


class INTLLoss(nn.Module):
    """INTL: IterNorm whitening of each view + normalized MSE + trace loss (Weng et al., ICLR 2024).

    With zhat_v = IterNorm(z_v) over the global batch (embeddings all-gathered across ranks,
    gradients flowing back through the gather),

        L = 1/(V-1) * sum_{i=1}^{V-1} [ nmse(zhat_i, zhat_0) + beta * (TL(zhat_i) + TL(zhat_0)) ]

    with nmse = 2 - 2 mean cos, TL the trace loss (:func:`spectral_ssl.spectral.trace_loss`) and
    beta = 0.01 (log2 N - 3) unless ``trace_weight`` is given. Returns ``loss``, ``alignment``
    (the mean nmse), ``trace`` (the mean TL term, so loss = alignment + beta * trace) and
    ``trace_weight``. Whitening, trace loss and alignment run in float32 under autocast.

    ``gather=False`` whitens each rank's local batch instead (per-GPU statistics).
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
        super().__init__()
        self.iters, self.eps, self.axis, self.form = iters, eps, axis, form
        self.trace_weight, self.gather = trace_weight, gather

    def forward(self, embeddings: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(embeddings) < 2:
            raise ValueError(f"INTLLoss needs at least 2 views, got {len(embeddings)}")
        if self.gather:
            embeddings = [gather_with_grad(z) for z in embeddings]
        n, d = embeddings[0].shape
        beta = self.trace_weight if self.trace_weight is not None else intl_trace_weight(n, d, self.axis)
        whitened = [iternorm(z, self.iters, self.eps, axis=self.axis, form=self.form) for z in embeddings]
        traces = [trace_loss(w, axis=self.axis) for w in whitened]
        pairs = len(whitened) - 1
        alignment = sum(normalized_mse(whitened[i], whitened[0]) for i in range(1, len(whitened))) / pairs
        trace = sum(traces[i] + traces[0] for i in range(1, len(whitened))) / pairs
        return {
            "loss": alignment + beta * trace,
            "alignment": alignment.detach(),
            "trace": trace.detach(),
            "trace_weight": torch.tensor(beta),
        }

    def extra_repr(self) -> str:
        return f"iters={self.iters}, eps={self.eps}, axis={self.axis}, trace_weight={self.trace_weight}"

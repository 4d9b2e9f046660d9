"""INTL: IterNorm with trace loss (Weng et al., "Modulate Your Spectrum in Self-Supervised
Learning", ICLR 2024)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..losses import INTLLoss
from ..spectral import Form
from .base import SSLMethod


class INTL(SSLMethod):
    """Whitens each view's embedding with IterNorm and aligns them; see :class:`INTLLoss`.

    Defaults are the official code's: T = 4 iterations, eps = 0, sample whitening (axis=0) over
    the global batch, trace weight 0.01 (log2 N - 3).
    """

    def __init__(self, iters: int = 4, eps: float = 0.0, axis: int = 0, trace_weight: float | None = None,
                 gather: bool = True, form: Form = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = INTLLoss(iters=iters, eps=eps, axis=axis, trace_weight=trace_weight, gather=gather, form=form)

    def compute_loss(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        return self.criterion(self.embed(views))

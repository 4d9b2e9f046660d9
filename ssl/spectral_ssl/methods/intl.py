"""INTL, IterNorm with trace loss, and the spectral transformation family it belongs to (Weng et
al., "Modulate Your Spectrum in Self-Supervised Learning", ICLR 2024)."""

from __future__ import annotations

from ..losses import INTLLoss, STLoss
from ..spectral import Form
from .base import SSLMethod


class INTL(SSLMethod):
    """Whitens each view's embedding with IterNorm and aligns them; see :class:`INTLLoss`.

    Defaults are the official code's: T = 4 iterations, eps = 0, sample whitening (axis=0) over
    the global batch, trace weight 0.01 (log2 N - 3). Give the datamodule more views for
    multi-crop (each crop is paired with view 0). ``momentum`` (e.g. 0.996, the ImageNet setting
    behind 76.6%) adds an EMA target encoder: view 0 goes through it alone as the gradient-free
    key, every other view is a query.
    """

    def __init__(
        self,
        iters: int = 4,
        eps: float = 0.0,
        axis: int = 0,
        trace_weight: float | None = None,
        gather: bool = True,
        form: Form = "auto",
        momentum: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.criterion = INTLLoss(iters=iters, eps=eps, axis=axis, trace_weight=trace_weight, gather=gather, form=form)
        if momentum is not None:
            self.add_momentum_target(momentum)

    def compute_loss(self, views):
        if self.target is None:
            return super().compute_loss(views)
        embeddings, features = self.embed(views[1:])
        return {**self.criterion(embeddings, key=self.target(views[0])), "features": features}


class SpectralTransform(SSLMethod):
    """The ST family: align the views after mapping the embedding covariance's spectrum through
    lambda -> lambda^power (p = -1/2 is whitening); see :class:`STLoss`. Sweep ``power`` to
    reproduce the paper's ST ablation."""

    def __init__(
        self,
        power: float = -0.5,
        method: str = "eigh",
        axis: int = 1,
        eps: float = 1e-5,
        iters: int = 4,
        trace_weight: float = 0.0,
        gather: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.criterion = STLoss(
            power=power, method=method, axis=axis, eps=eps, iters=iters, trace_weight=trace_weight, gather=gather
        )

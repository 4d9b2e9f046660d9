"""The baselines the INTL paper compares with; each only chooses its loss (see the loss docstrings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..losses import BarlowTwinsLoss, BYOLLoss, NTXentLoss, VICRegLoss, WMSELoss
from .base import SSLMethod


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., ICML 2021): cross-correlation to the identity, the loss x
    ``scale_loss`` (solo-learn's: 0.1 in its CIFAR recipe, 0.024 by default; the paper's 1)."""

    def __init__(self, lambd: float = 0.0051, gather: bool = True, scale_loss: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = BarlowTwinsLoss(lambd=lambd, gather=gather, scale=scale_loss)


class VICReg(SSLMethod):
    """VICReg (Bardes et al., ICLR 2022): variance, invariance and covariance terms."""

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gather: bool = True,
        variance_over_views: Literal["mean", "sum"] = "mean",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.criterion = VICRegLoss(
            sim_coeff=sim_coeff,
            std_coeff=std_coeff,
            cov_coeff=cov_coeff,
            gather=gather,
            variance_over_views=variance_over_views,
        )


class SimCLR(SSLMethod):
    """SimCLR (Chen et al., ICML 2020): NT-Xent over all gathered negatives."""

    def __init__(self, temperature: float = 0.1, gather: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = NTXentLoss(temperature=temperature, gather=gather)


class WMSE(SSLMethod):
    """W-MSE (Ermolov et al., ICML 2021): MSE between views whitened by Cholesky in sub-batches of
    ``w_size``, ``w_iter`` times per step; see :class:`spectral_ssl.losses.WMSELoss`
    (``symmetric=False``: solo-learn's, the second view of each pair detached)."""

    def __init__(
        self,
        w_size: int = 128,
        w_iter: int = 1,
        eps: float = 0.0,
        gather: bool = True,
        symmetric: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.criterion = WMSELoss(w_size=w_size, w_iter=w_iter, eps=eps, gather=gather, symmetric=symmetric)


class BYOL(SSLMethod):
    """BYOL (Grill et al., NeurIPS 2020): an online backbone + projector + predictor regresses an
    EMA target's projection of the other view; the target's momentum rises from
    ``base_momentum`` to 1 by a cosine, the target moving after optimizer step k with the momentum
    of step k - 1, as BYOL's and solo-learn's code do. The predictor is [Linear-BN-ReLU] x hidden
    then Linear back to the projector's width, in the projector's layout (bias, BatchNorm)."""

    def __init__(self, predictor_hidden_dims: Sequence[int] = (4096,), base_momentum: float = 0.99, **kwargs) -> None:
        super().__init__(**kwargs)
        width = self.projector.out_dim
        self.predictor = self.add_head(self.head(width, predictor_hidden_dims, width))
        self.add_momentum_target(base_momentum, lag=1)
        self.criterion = BYOLLoss()

    def compute_loss(self, views):
        embeddings, features = self.embed(views)
        predictions = [self.predictor(z) for z in embeddings]
        return {**self.criterion(predictions, [self.target(v) for v in views]), "features": features}

"""The baselines the INTL paper compares with; each only chooses its loss (see the loss docstrings)."""

from __future__ import annotations

from ..losses import BarlowTwinsLoss, NTXentLoss, VICRegLoss
from .base import SSLMethod


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al., ICML 2021): cross-correlation to the identity."""

    def __init__(self, lambd: float = 0.0051, gather: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = BarlowTwinsLoss(lambd=lambd, gather=gather)


class VICReg(SSLMethod):
    """VICReg (Bardes et al., ICLR 2022): variance, invariance and covariance terms."""

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0, gather: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = VICRegLoss(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff, gather=gather)


class SimCLR(SSLMethod):
    """SimCLR (Chen et al., ICML 2020): NT-Xent over all gathered negatives."""

    def __init__(self, temperature: float = 0.1, gather: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.criterion = NTXentLoss(temperature=temperature, gather=gather)

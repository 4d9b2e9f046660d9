"""Self-supervised methods: :class:`SSLMethod` owns the loop, each method defines its loss."""

from .base import SSLMethod
from .baselines import BYOL, WMSE, BarlowTwins, SimCLR, VICReg
from .intl import INTL, SpectralTransform
from .supervised import SupervisedClassifier

__all__ = [
    "BYOL",
    "INTL",
    "WMSE",
    "BarlowTwins",
    "SSLMethod",
    "SimCLR",
    "SpectralTransform",
    "SupervisedClassifier",
    "VICReg",
]

"""The normalization papers' objects and measurements: the theory networks (:func:`mlp`), the
nonlinearity measures (:func:`hessian_norm`, :func:`lssr`), the LN-Net construction, and the
experiments that re-run the papers' claims (:mod:`spectral_ssl.science.experiments`,
``python tools/science.py``)."""

from .construction import construct, verify
from .mlp import mlp
from .nonlinearity import hessian_norm, layer_norm_hessian_norm, lssr, ssr

__all__ = ["construct", "hessian_norm", "layer_norm_hessian_norm", "lssr", "mlp", "ssr", "verify"]

"""Backbones and heads: one factory, :func:`create_backbone`, with keyword options
(:mod:`~spectral_ssl.models.factory`); the ResNets, the norm layers and the projector head live
beside it."""

from .factory import ACTS, NORMS, BackboneConfig, NormOptions, act_layer, create_backbone, norm_layer
from .heads import Projector
from .resnet import ResNet

__all__ = [
    "ACTS",
    "NORMS",
    "BackboneConfig",
    "NormOptions",
    "Projector",
    "ResNet",
    "act_layer",
    "create_backbone",
    "norm_layer",
]

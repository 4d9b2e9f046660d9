"""Backbones and heads: one factory, :func:`create_backbone`, with keyword options."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from .heads import Projector
from .resnet import ARCHITECTURES, ResNet

NORMS = ("bn", "syncbn", "gn")
ACTS = {"relu": partial(nn.ReLU, inplace=True), "gelu": nn.GELU, "identity": nn.Identity}


def norm_layer(norm: str, *, gn_groups: int = 32):
    """The 2-d normalization constructor ``f(num_channels) -> nn.Module`` for a norm name."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "syncbn":
        return nn.SyncBatchNorm
    if norm == "gn":
        return lambda channels: nn.GroupNorm(min(gn_groups, channels), channels)
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class BackboneConfig:
    """Options of :func:`create_backbone`, as one config group (``--model.backbone.norm=gn``)."""

    name: str = "resnet18"
    norm: str = "bn"
    act: str = "relu"
    cifar_stem: bool = False
    zero_init_residual: bool = False
    width: int = 64
    gn_groups: int = 32

    def build(self) -> nn.Module:
        return create_backbone(**self.__dict__)


def create_backbone(name: str = "resnet18", *, norm: str = "bn", act: str = "relu", cifar_stem: bool = False,
                    zero_init_residual: bool = False, width: int = 64, gn_groups: int = 32) -> nn.Module:
    """A feature extractor: images (B, 3, H, W) -> features (B, ``model.num_features``).

    ``name``: ``resnet18``, ``resnet34``, ``resnet50`` (torchvision's architecture and parameter
    names; see :mod:`spectral_ssl.models.resnet`) or ``timm:<model>`` for any timm model, built
    with ``num_classes=0`` (timm's own norm and act then apply).
    """
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name.removeprefix("timm:"), pretrained=False, num_classes=0)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(ARCHITECTURES)} or 'timm:<model>'")
    if act not in ACTS:
        raise ValueError(f"unknown act {act!r}; choose one of {', '.join(ACTS)}")
    block, layers = ARCHITECTURES[name]
    return ResNet(block, layers, norm_layer=norm_layer(norm, gn_groups=gn_groups), act_layer=ACTS[act],
                  width=width, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)


__all__ = ["BackboneConfig", "Projector", "ResNet", "create_backbone", "norm_layer"]

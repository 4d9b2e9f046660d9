"""The backbone factory: :func:`create_backbone` and its options, :class:`BackboneConfig` (one
config group) and :class:`NormOptions`, and the norm / activation registries it draws from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from torch import nn

from .norms import GroupedLayerNorm, IterNorm2d, LayerNorm2d, ParallelLayerNorm
from .resnet import ARCHITECTURES, ResNet

NORMS = ("bn", "syncbn", "gn", "ln", "pln", "lng", "iternorm", "none")
ACTS = ("relu", "gelu", "identity", "pln")


@dataclass(frozen=True)
class NormOptions:
    """Per-norm options: GroupNorm's group count, PLN's group size k, LN-G's group count (and
    whether it pools over H x W, which makes it GroupNorm), IterNorm's channels per group."""

    gn_groups: int = 32
    pln_group_size: int = 8
    lng_groups: int = 4
    lng_pool_spatial: bool = False
    iternorm_group_size: int = 64


def norm_layer(norm: str, options: NormOptions = NormOptions()) -> Callable[..., nn.Module]:
    """The normalization constructor ``f(num_channels, **ignored) -> nn.Module`` for a norm name."""
    layers: dict[str, Callable[..., nn.Module]] = {
        "bn": nn.BatchNorm2d,
        "syncbn": nn.SyncBatchNorm,
        "gn": lambda c, **_: nn.GroupNorm(min(options.gn_groups, c), c),
        "ln": LayerNorm2d,
        "pln": partial(ParallelLayerNorm, group_size=options.pln_group_size),
        "lng": partial(GroupedLayerNorm, num_groups=options.lng_groups, pool_spatial=options.lng_pool_spatial),
        "iternorm": partial(IterNorm2d, group_size=options.iternorm_group_size),
        "none": lambda c, **_: nn.Identity(),
    }
    if norm not in layers:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return layers[norm]


def act_layer(act: str, options: NormOptions = NormOptions()) -> Callable[[int], nn.Module]:
    """The activation constructor ``f(num_channels) -> nn.Module`` for an activation name."""
    layers: dict[str, Callable[[int], nn.Module]] = {
        "relu": lambda c: nn.ReLU(inplace=True),
        "gelu": lambda c: nn.GELU(),
        "identity": lambda c: nn.Identity(),
        "pln": norm_layer("pln", options),  # PLN as the activation: the same layer as the norm
    }
    if act not in layers:
        raise ValueError(f"unknown act {act!r}; choose one of {', '.join(ACTS)}")
    return layers[act]


@dataclass(frozen=True)
class BackboneConfig:
    """Options of :func:`create_backbone`, as one config group (``--model.backbone.norm=pln``)."""

    name: str = "resnet18"
    norm: str = "bn"
    act: str = "relu"
    cifar_stem: bool = False
    zero_init_residual: bool = False
    width: int = 64
    norm_options: NormOptions = NormOptions()

    def build(self) -> nn.Module:
        return create_backbone(**{**asdict(self), "norm_options": self.norm_options})


def create_backbone(
    name: str = "resnet18",
    *,
    norm: str = "bn",
    act: str = "relu",
    cifar_stem: bool = False,
    zero_init_residual: bool = False,
    width: int = 64,
    norm_options: NormOptions | dict = NormOptions(),
) -> nn.Module:
    """A feature extractor: images (B, 3, H, W) -> features (B, ``model.num_features``).

    ``name``: ``resnet18``, ``resnet34``, ``resnet50`` (torchvision's architecture and parameter
    names; see :mod:`spectral_ssl.models.resnet`) or ``timm:<model>`` for any timm model, built
    with ``num_classes=0``; for timm models ``norm``/``act`` other than the defaults are passed as
    timm's ``norm_layer``/``act_layer`` (ResNets and others that take them).

    ``norm``: ``bn``, ``syncbn``, ``gn`` (GroupNorm), ``ln`` (LayerNorm2d over the channels),
    ``pln`` (parallel LN), ``lng`` (LN-G), ``iternorm`` (the IterNorm layer), ``none`` (no norm;
    residual branches get a zero-initialised SkipInit gain). Options: :class:`NormOptions`.

    ``act``: ``relu``, ``gelu``, ``identity``, or ``pln``: **PLN as the activation**, the PLN
    paper's proposal, which needs ``norm="pln"``: PLN then replaces both the norm and the
    nonlinearity — every conv is followed by a PLN and nothing else, and the activation after
    each residual addition is a PLN too. (``norm="pln", act="relu"`` is PLN used as a norm.)
    In this mode every tensor of the residual stream comes out of a PLN, whose groups sum to
    zero: the features' covariance has rank at most C (1 - 1/k) by construction, a cap to report
    beside any spectrum or effective-rank figure.
    """
    if isinstance(norm_options, dict):
        norm_options = NormOptions(**norm_options)
    if name.startswith("timm:"):
        return _timm_backbone(name.removeprefix("timm:"), norm, act, norm_options)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(ARCHITECTURES)} or 'timm:<model>'")
    norm_fn, act_fn = norm_layer(norm, norm_options), act_layer(act, norm_options)
    out_act_fn = act_fn
    if act == "pln":
        if norm != "pln":
            raise ValueError(f"act='pln' (PLN as the activation) replaces the norm too: use norm='pln', not {norm!r}")
        act_fn = act_layer("identity")
    block, layers = ARCHITECTURES[name]
    return ResNet(
        block,
        layers,
        norm_layer=norm_fn,
        act_layer=act_fn,
        out_act_layer=out_act_fn,
        width=width,
        cifar_stem=cifar_stem,
        zero_init_residual=zero_init_residual,
        skip_init=norm == "none",
    )


def _timm_backbone(model: str, norm: str, act: str, options: NormOptions) -> nn.Module:
    import timm

    kwargs = {}
    if norm != "bn":
        kwargs["norm_layer"] = norm_layer(norm, options)
    if act != "relu":
        if act == "pln":
            raise ValueError("act='pln' is available for the built-in ResNets only")
        kwargs["act_layer"] = timm.layers.get_act_layer(act)  # timm's own, which accept inplace=
    try:
        return timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"timm model {model!r} does not accept norm={norm!r}/act={act!r} ({error}); "
            "use its defaults (norm='bn', act='relu')"
        ) from error

"""The backbone factory: :func:`create_backbone` and its options, :class:`BackboneConfig` (one
config group) and :class:`NormOptions`, and the norm / activation registries it draws from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from .norms import ChannelsLast, GroupedLayerNorm, IterNorm2d, LayerNorm2d, ParallelLayerNorm
from .resnet import ARCHITECTURES, ResNet
from .vit import VIT_PRESETS, mlp_with_channel_activation, vision_transformer


@dataclass(frozen=True)
class NormOptions:
    """Per-norm options: GroupNorm's group count, PLN's group size k, LN-G's group count (and
    whether it pools over H x W, which makes it GroupNorm), IterNorm's channels per group."""

    gn_groups: int = 32
    pln_group_size: int = 8
    lng_groups: int = 4
    lng_pool_spatial: bool = False
    iternorm_group_size: int = 64


@dataclass(frozen=True)
class NormSpec:
    """One entry of :data:`NORM_REGISTRY`: ``make(channels, options, channels_last)`` builds the
    layer in the layout the architecture hands it; ``types``: the module types it builds (what
    :func:`~spectral_ssl.models.norms.is_norm` finds, for ``trainable=norm_only``); ``timm``: the
    timm families whose own layer it is (the export writes a timm folder for those)."""

    make: Callable[[int, NormOptions, bool], nn.Module]
    types: tuple[type, ...] = ()
    timm: tuple[str, ...] = ()


def _torch_norm(make: Callable[[int, NormOptions], nn.Module]) -> Callable[[int, NormOptions, bool], nn.Module]:
    """A channels-first torch norm, handed the last axis in the channels-last layout."""
    return lambda c, options, last: ChannelsLast(make(c, options)) if last else make(c, options)


NORM_REGISTRY: dict[str, NormSpec] = {
    "bn": NormSpec(
        lambda c, o, last: ChannelsLast(nn.BatchNorm1d(c)) if last else nn.BatchNorm2d(c),
        (nn.modules.batchnorm._NormBase,),
        ("ResNet",),
    ),
    "syncbn": NormSpec(_torch_norm(lambda c, o: nn.SyncBatchNorm(c)), (nn.SyncBatchNorm,), ("ResNet",)),
    "gn": NormSpec(_torch_norm(lambda c, o: nn.GroupNorm(min(o.gn_groups, c), c)), (nn.GroupNorm,)),
    "ln": NormSpec(
        lambda c, o, last: nn.LayerNorm(c, eps=1e-6) if last else LayerNorm2d(c),
        (nn.LayerNorm,),
        ("VisionTransformer",),
    ),
    "rms": NormSpec(
        lambda c, o, last: ParallelLayerNorm(c, group_size=c, eps=1e-6, centre=False, channels_last=last),
        (ParallelLayerNorm,),
    ),
    "pln": NormSpec(
        lambda c, o, last: ParallelLayerNorm(c, group_size=o.pln_group_size, channels_last=last), (ParallelLayerNorm,)
    ),
    "pls": NormSpec(
        lambda c, o, last: ParallelLayerNorm(c, group_size=o.pln_group_size, centre=False, channels_last=last),
        (ParallelLayerNorm,),
    ),
    "lng": NormSpec(
        lambda c, o, last: GroupedLayerNorm(
            c, num_groups=o.lng_groups, pool_spatial=o.lng_pool_spatial, channels_last=last
        ),
        (GroupedLayerNorm,),
    ),
    "iternorm": NormSpec(
        lambda c, o, last: IterNorm2d(c, group_size=o.iternorm_group_size, channels_last=last), (IterNorm2d,)
    ),
    "none": NormSpec(lambda c, o, last: nn.Identity()),
}
"""The normalizations by name (``--model.backbone.norm``), in the way timm's ``create_norm_layer``
maps names to layers: a new norm is one entry (its name then shows in ``--help``, builds in every
architecture's layout, counts for ``trainable=norm_only``, and its ``timm`` families export).
Formulas and sources: :mod:`spectral_ssl.models.norms`."""

NORMS = tuple(NORM_REGISTRY)
Norm = Literal[NORMS]  # type: ignore[valid-type]  # the choices --help lists
ACTS = ("relu", "gelu", "tanh", "sigmoid", "identity", "pln")
BACKBONES = (*ARCHITECTURES, *VIT_PRESETS)


def resolved_norm_act(name: str, norm: str | None = None, act: str | None = None) -> tuple[str | None, str | None]:
    """``norm`` and ``act``, each left unset (None) replaced by the architecture's own: ``bn``/``relu``
    for the ResNets, ``ln``/``gelu`` for the Vision Transformers, None for ``timm:`` models (their own)."""
    if name in VIT_PRESETS:
        own = ("ln", "gelu")
    elif name.startswith("timm:"):
        own = (None, None)
    else:
        own = ("bn", "relu")
    return norm or own[0], act or own[1]


def norm_layer(
    norm: str, options: NormOptions = NormOptions(), channels_last: bool = False
) -> Callable[..., nn.Module]:
    """The normalization constructor ``f(num_channels, **ignored) -> nn.Module`` for a name of
    :data:`NORM_REGISTRY`, in the layout the architecture hands it: ``channels_last=False`` for
    (B, C, H, W) maps (conv nets), ``True`` for (B, N, D) tokens (transformers) and (B, D) vectors.

    ``bn``/``syncbn``: BatchNorm (over the batch and every position); ``gn``: GroupNorm
    (``gn_groups``; pools over positions); ``ln``: LayerNorm over the channels of each position;
    ``rms``: RMSNorm over them (x / sqrt(mean(x^2) + 1e-6)); ``pln``/``pls``: PLN/PLS with group
    size ``pln_group_size``; ``lng``: LN-G with ``lng_groups`` groups; ``iternorm``: the IterNorm
    layer; ``none``: identity.
    """
    if norm not in NORM_REGISTRY:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    make = NORM_REGISTRY[norm].make
    return lambda c, **_: make(c, options, channels_last)


def act_layer(
    act: str, options: NormOptions = NormOptions(), channels_last: bool = False
) -> Callable[[int], nn.Module]:
    """The activation constructor ``f(num_channels) -> nn.Module`` for an activation name
    (``pln``: the PLN layer itself, in the architecture's layout)."""
    layers: dict[str, Callable[[int], nn.Module]] = {
        "relu": lambda c: nn.ReLU(inplace=True),
        "gelu": lambda c: nn.GELU(),
        "tanh": lambda c: nn.Tanh(),
        "sigmoid": lambda c: nn.Sigmoid(),
        "identity": lambda c: nn.Identity(),
        "pln": norm_layer("pln", options, channels_last),  # PLN as the activation: the same layer as the norm
    }
    if act not in layers:
        raise ValueError(f"unknown act {act!r}; choose one of {', '.join(ACTS)}")
    return layers[act]


@dataclass(frozen=True)
class BackboneConfig:
    """Options of :func:`create_backbone`, as one config group (``--model.backbone.norm=pln``).

    ``image_size``: the side of the images the backbone is trained on, in pixels. The commands
    set it from the data (``data.image_size``); a Vision Transformer is built for it, a
    checkpoint keeps it, and an export fixed to one size (ONNX) takes it. None: unknown (32 with
    the CIFAR stem, else 224, where one is needed). ``view_sizes``: the sides of the training
    views (the commands link them from the data's recipe: multi-crop's smaller crops); the
    backbone is built to take each and checked on each. ``weights``: a file to start from
    instead of the random initialisation (our export, a ``.ckpt`` of ``pretrain``, or a torchvision /
    timm state_dict; :func:`spectral_ssl.checkpoints.backbone_weights`): loaded when training
    starts, not when a run resumes. Options left None take the architecture's own value
    (:func:`create_backbone`).
    """

    name: str = "resnet18"
    norm: Norm | None = None
    act: str | None = None
    cifar_stem: bool = False
    cifar_stem_padding: int = 1
    zero_init_residual: bool = False
    width: int = 64
    norm_options: NormOptions = NormOptions()
    image_size: int | None = None
    view_sizes: tuple[int, ...] | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    pooling: str | None = None
    weights: str | None = None

    def build(self) -> nn.Module:
        """The backbone, at its random initialisation (``weights`` are the training's to load)."""
        options = {key: value for key, value in asdict(self).items() if key != "weights"}
        return create_backbone(**{**options, "norm_options": self.norm_options})


def create_backbone(
    name: str = "resnet18",
    *,
    norm: str | None = None,
    act: str | None = None,
    cifar_stem: bool = False,
    cifar_stem_padding: int = 1,
    zero_init_residual: bool = False,
    width: int = 64,
    norm_options: NormOptions | dict = NormOptions(),
    image_size: int | None = None,
    view_sizes: Sequence[int] | None = None,
    patch_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    pooling: str | None = None,
) -> nn.Module:
    """A feature extractor: images (B, 3, H, W) -> features (B, ``model.feature_dim``), the
    width measured by :func:`feature_width` when the model is built, at ``image_size`` and at
    every side in ``view_sizes`` (the training views: multi-crop's crops), so that a size the
    run will feed and the backbone cannot take is a ValueError naming it at build, not an error in
    the first step; ViTs (ours and timm's) are built to take every one of them (``dynamic_img_size``).

    ``name``:

    - ``resnet18``, ``resnet34``, ``resnet50``: torchvision's architecture and parameter names
      (:mod:`spectral_ssl.models.resnet`); ``cifar_stem``, ``width`` (the first stage's
      channels, 64 in the paper), ``zero_init_residual``, ``cifar_stem_padding`` (2: the official
      INTL and solo-learn CIFAR stem; see :class:`~spectral_ssl.models.resnet.ResNet`). Default
      norm ``bn``, act ``relu``.
    - ``vit_tiny``, ``vit_small``, ``vit_base``: timm's VisionTransformer
      (:mod:`spectral_ssl.models.vit`) for ``image_size`` (224 when None) with ``patch_size``,
      ``embed_dim``, ``depth``, ``num_heads`` (None: the preset's) and ``pooling`` (``token``:
      the class token, default; ``avg``: mean of the tokens). Default norm ``ln``, act ``gelu``
      (the MLPs' activation; ``pln`` makes PLN the activation, the PLN paper's proposal).
    - ``timm:<model>``: any timm model, built with ``num_classes=0`` (and ``img_size`` when it
      takes one). A norm / act choice is applied in the layout its family uses: timm's ResNets
      (NCHW maps) and VisionTransformers (the last axis); other families are refused at build.
      ``bn``/``relu`` (or None) keep the model's own layers.

    ``norm``: ``bn``, ``syncbn``, ``gn`` (GroupNorm), ``ln`` (LayerNorm over the channels),
    ``rms`` (RMSNorm), ``pln`` (parallel LN), ``pls`` (PLN uncentred), ``lng`` (LN-G),
    ``iternorm`` (the IterNorm layer), ``none`` (no norm; a ResNet's residual branches get a
    zero-initialised SkipInit gain). Options: :class:`NormOptions`; layouts and formulas:
    :func:`norm_layer`.

    ``act``: ``relu``, ``gelu``, ``tanh``, ``sigmoid``, ``identity``, or ``pln``: **PLN as the activation**. In a
    ResNet it needs ``norm="pln"``: PLN then replaces both the norm and the nonlinearity — every
    conv is followed by a PLN and nothing else, and the activation after each residual addition
    is a PLN too. (``norm="pln", act="relu"`` is PLN used as a norm.) In this mode every tensor
    of the residual stream comes out of a PLN, whose groups sum to zero: the features'
    covariance has rank at most C (1 - 1/k) by construction, a cap to report beside any spectrum
    or effective-rank figure. In a ViT it replaces the MLPs' GELU.

    Raises ValueError naming an unknown or ill-fitting option.
    """
    if isinstance(norm_options, dict):
        norm_options = NormOptions(**norm_options)
    model = _build(
        name, norm, act, cifar_stem, cifar_stem_padding, zero_init_residual, width, norm_options, image_size,
        view_sizes or (), patch_size, embed_dim, depth, num_heads, pooling,
    )  # fmt: skip
    size = image_size or getattr(model, "pretrained_cfg", {}).get("input_size", (default_image_size(cifar_stem),))[-1]
    model.feature_dim = checked_feature_width(model, name, size, view_sizes)
    return model


def default_image_size(cifar_stem: bool) -> int:
    """The side assumed when neither the data nor a timm model's own config gives one: CIFAR's 32
    with the CIFAR stem, else ImageNet's 224."""
    return 32 if cifar_stem else 224


def _build(
    name, norm, act, cifar_stem, cifar_stem_padding, zero_init_residual, width, norm_options, image_size, view_sizes,
    patch_size, embed_dim, depth, num_heads, pooling,
) -> nn.Module:  # fmt: skip
    norm, act = resolved_norm_act(name, norm, act)
    if name.startswith("timm:"):
        return _timm_backbone(name.removeprefix("timm:"), norm, act, norm_options, image_size, view_sizes)
    if name in VIT_PRESETS:
        return vision_transformer(
            name,
            image_size=image_size or 224,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            pooling=pooling or "token",
            norm_fn=None if norm == "ln" else norm_layer(norm, norm_options, channels_last=True),
            act_fn=None if act == "gelu" else act_layer(act, norm_options, channels_last=True),
        )
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or 'timm:<model>'")
    if pooling not in (None, "avg"):
        raise ValueError(f"pooling={pooling!r}: a ResNet pools its last map by its average (pooling 'avg')")
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
        cifar_stem_padding=cifar_stem_padding,
        zero_init_residual=zero_init_residual,
        skip_init=norm == "none",
    )


def checked_feature_width(model: nn.Module, name: str, image_size: int, view_sizes: Sequence[int] | None) -> int:
    """:func:`feature_width` at ``image_size`` and at every side in ``view_sizes``: the width, the
    same at each. Raises ValueError naming a side the backbone cannot take, or whose width differs."""
    width = None
    for size in sorted({image_size, *(view_sizes or ())}, reverse=True):
        try:
            measured = feature_width(model, size)
        except (RuntimeError, AssertionError, ValueError) as error:
            what = "the image size" if size == image_size else "a view size of the data's augment recipe"
            raise ValueError(
                f"backbone {name} cannot take {size}x{size} images ({what}; the run feeds "
                f"{', '.join(map(str, sorted({image_size, *(view_sizes or ())}, reverse=True)))} px): {error}"
            ) from error
        if width is not None and measured != width:
            raise ValueError(f"backbone {name} returns {measured} features at {size} px but {width} at larger sizes")
        width = measured
    return width


def feature_width(model: nn.Module, image_size: int) -> int:
    """D, the width of what ``model`` returns for images (B, 3, S, S) -> (B, D), measured by one
    forward pass of a zero image at ``image_size`` in eval mode (buffers untouched), never read
    from metadata: some timm models' ``num_features`` is not the width of their pooled output
    (MobileNetV3's head has a pre-logits stage: ``num_features`` 576, ``forward`` 1024, timm's
    ``head_hidden_size``). Raises ValueError when the output is not one row of features per image."""
    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
    if output.ndim != 2:
        raise ValueError(
            f"the backbone returns {tuple(output.shape)} for one {image_size}x{image_size} image, not (1, features): "
            "a backbone must pool its feature map into one vector per image"
        )
    return output.shape[1]


TIMM_LAYOUTS = {"ResNet": False, "VisionTransformer": True}
"""timm model classes whose norm and activation can be chosen -> whether their norms see channels last."""


def _timm_backbone(
    model_name: str,
    norm: str | None,
    act: str | None,
    options: NormOptions,
    image_size: int | None,
    view_sizes: Sequence[int] = (),
):
    """timm's ``model_name`` as a feature extractor, built for ``image_size`` when it takes one
    (and, when ``view_sizes`` holds other sides, with ``dynamic_img_size`` where the family has it:
    its ViTs then resample their position embedding per input), with ``norm``/``act`` (None,
    ``bn``, ``relu``: its own) in its family's layout. :func:`create_backbone` checks it on every size."""
    import timm

    kwargs = {"pretrained": False, "num_classes": 0}
    sizing = [{"img_size": image_size}] if image_size else []
    if image_size and set(view_sizes) - {image_size}:
        sizing.insert(0, {"img_size": image_size, "dynamic_img_size": True})
    for extra in [*sizing, {}]:  # the first the family takes (conv nets take any size and no img_size)
        try:
            model = timm.create_model(model_name, **kwargs, **extra)
        except TypeError:
            continue
        kwargs.update(extra)
        break
    own_norm, own_act = norm in (None, "bn"), act in (None, "relu")
    if not (own_norm and own_act):
        family = next((cls.__name__ for cls in type(model).__mro__ if cls.__name__ in TIMM_LAYOUTS), None)
        if family is None:
            raise ValueError(
                f"timm:{model_name} is a {type(model).__name__}, whose norm layout is not known here: norm and act "
                f"choices work for timm's {' and '.join(TIMM_LAYOUTS)} families; leave norm/act unset for its own"
            )
        channels_last = TIMM_LAYOUTS[family]
        if not own_norm:
            kwargs["norm_layer"] = norm_layer(norm, options, channels_last)
        if not own_act:
            if act == "pln":
                if family != "VisionTransformer":
                    raise ValueError("act='pln' needs the channel count: available for timm's VisionTransformers")
                kwargs["mlp_layer"] = mlp_with_channel_activation(act_layer(act, options, channels_last=True))
            else:
                kwargs["act_layer"] = timm.layers.get_act_layer(act)  # timm's own, which accept inplace=
        model = timm.create_model(model_name, **kwargs)
    # what timm.create_model needs to build the same model (the export)
    model.timm_args = {k: v for k, v in kwargs.items() if k in ("img_size", "dynamic_img_size")}
    return model

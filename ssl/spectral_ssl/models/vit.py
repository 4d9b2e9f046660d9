"""Vision Transformers built on timm's ``VisionTransformer`` (attention through
``torch.nn.functional.scaled_dot_product_attention``), with the normalization and the MLP's
activation as choices: the transformer's norms receive (B, N, D) tokens and normalize D, so every
norm is built channels-last (:func:`spectral_ssl.models.factory.norm_layer`).

The sizes are timm's (Dosovitskiy et al., ICLR 2021; Touvron et al., DeiT, ICML 2021):

=============  ==========  =====  =====
preset         embed_dim   depth  heads
=============  ==========  =====  =====
``vit_tiny``   192         12     3
``vit_small``  384         12     6
``vit_base``   768         12     12
=============  ==========  =====  =====

with MLP ratio 4 and LayerNorm (eps 1e-6) by default; ``norm="ln"`` and ``act="gelu"`` build
exactly timm's model, so its weights load into ``timm.create_model("vit_<size>_patch<P>_224",
img_size=..., ...)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

VIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}
"""name -> (embed_dim, depth, num_heads)."""

POOLINGS = ("token", "avg")


def default_patch_size(image_size: int) -> int:
    """16 for ImageNet-sized images (>= 128 px), 4 for CIFAR's 32 px (and up to 127), 2 below
    (the digits' 16 px: 64 tokens)."""
    return 16 if image_size >= 128 else 4 if image_size >= 32 else 2


def mlp_with_channel_activation(act: Callable[[int], nn.Module]) -> type[nn.Module]:
    """timm's ``Mlp`` whose activation is built with the hidden width (PLN as the activation
    needs it; timm builds ``act_layer()`` without arguments)."""
    from timm.layers import Mlp

    class ChannelActivationMlp(Mlp):
        def __init__(self, in_features: int, hidden_features: int | None = None, **kwargs) -> None:
            super().__init__(in_features, hidden_features, **kwargs)
            self.act = act(hidden_features or in_features)

    return ChannelActivationMlp


def vision_transformer(
    name: str,
    *,
    image_size: int,
    patch_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    pooling: str = "token",
    norm_fn: Callable[..., nn.Module] | None = None,
    act_fn: Callable[[int], nn.Module] | None = None,
) -> nn.Module:
    """timm's ``VisionTransformer`` for the preset ``name`` (``vit_tiny``, ``vit_small``,
    ``vit_base``): images (B, 3, S, S) with S = ``image_size`` -> features (B, embed_dim).

    Other image sizes are taken too (multi-crop's smaller crops): timm resamples the position
    embedding (``dynamic_img_size``). ``patch_size`` (default :func:`default_patch_size`) must
    divide ``image_size``;
    ``embed_dim``, ``depth``, ``num_heads`` override the preset (``num_heads`` must divide
    ``embed_dim``). ``pooling``: ``token`` (the class token, after the final norm) or ``avg``
    (no class token; the mean of the patch tokens, then the final norm, timm's ``fc_norm``).
    ``norm_fn``: a channels-last norm constructor ``f(D)`` (None: timm's LayerNorm, eps 1e-6);
    ``act_fn``: an activation constructor ``f(hidden width)`` for the MLPs (None: GELU).
    Raises ValueError naming the option that does not fit.
    """
    from timm.models.vision_transformer import VisionTransformer

    if name not in VIT_PRESETS:
        raise ValueError(f"unknown Vision Transformer {name!r}; choose one of {', '.join(VIT_PRESETS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose 'token' (class token) or 'avg' (mean of the tokens)")
    preset_dim, preset_depth, preset_heads = VIT_PRESETS[name]
    embed_dim, depth = embed_dim or preset_dim, depth or preset_depth
    num_heads = num_heads or preset_heads
    patch_size = patch_size or default_patch_size(image_size)
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide the image size {image_size}: choose a divisor")
    if embed_dim % num_heads:
        raise ValueError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}")
    kwargs = {}
    if norm_fn is not None:
        kwargs["norm_layer"] = norm_fn
    if act_fn is not None:
        kwargs["mlp_layer"] = mlp_with_channel_activation(act_fn)
    model = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        num_classes=0,
        class_token=pooling == "token",
        global_pool=pooling,
        dynamic_img_size=True,  # multi-crop's smaller crops: the position embedding is resampled
        **kwargs,
    )
    model.timm_args = {  # what timm.create_model needs to build the same model (export)
        "img_size": image_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "class_token": pooling == "token",
        "global_pool": pooling,
        "dynamic_img_size": True,
    }
    return model

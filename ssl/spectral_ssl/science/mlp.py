"""The theory papers' networks: multilayer perceptrons whose normalization and activation are
options, built from the same norm and activation registries as the backbones
(:func:`spectral_ssl.models.norm_layer` / :func:`~spectral_ssl.models.act_layer`, channels last).

Each hidden layer is ``Linear -> norm -> act``; ``"none"`` / ``"identity"`` leave a slot out, so

====================================================  =========================================
network                                               ``mlp(..., norm=, act=)``
====================================================  =========================================
Linear -> PLN-k -> Linear (PLN-Net, no activation)    ``norm="pln", act="identity", group_size=k``
Linear -> LN -> ... -> Linear (LN-Net)                ``norm="ln", act="identity", depth=n``
LN-G with g groups                                    ``norm="lng", act="identity", groups=g``
PLS-k, RMSNorm                                        ``norm="pls"`` / ``norm="rms"``
Linear -> tanh / ReLU / sigmoid -> Linear             ``norm="none", act="tanh"`` (``relu``...)
Linear -> LN -> ReLU -> ... (a normalized deep MLP)   ``norm="ln", act="relu", depth=n``
a linear network (no nonlinearity at all)             ``norm="none", act="identity"``
====================================================  =========================================
"""

from __future__ import annotations

from torch import nn

from ..models.factory import NormOptions, act_layer, norm_layer


def mlp(
    in_features: int,
    out_features: int,
    width: int,
    *,
    depth: int = 1,
    norm: str = "none",
    act: str = "relu",
    group_size: int = 8,
    groups: int = 4,
    eps: float | None = None,
) -> nn.Sequential:
    """A perceptron (B, ``in_features``) -> (B, ``out_features``) with ``depth`` hidden layers
    of ``width`` units, each ``Linear -> norm -> act``, and a linear read-out.

    ``norm``: a name of :data:`spectral_ssl.models.NORMS` (``none``: no norm layer), applied to
    the ``width`` features of each sample (``bn`` normalizes over the batch); ``group_size``: PLN's
    / PLS's k (the PLN paper's "norm size"), ``groups``: LN-G's group count. ``act``: a name of
    :data:`spectral_ssl.models.ACTS` (``identity``: none; ``pln``: PLN as the activation).
    ``eps``: overrides the norm layer's epsilon (the theory is stated for eps -> 0; 1e-5 for
    PLN/PLS/LN-G and 1e-6 for LN/RMSNorm by default). Linear layers use torch's default
    initialization (uniform +-1/sqrt(fan_in)), norm layers gamma = 1, beta = 0.

    Raises ValueError for an unknown name, or a group size / count that does not divide ``width``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")
    options = NormOptions(pln_group_size=group_size, lng_groups=groups)
    make_norm, make_act = norm_layer(norm, options, channels_last=True), act_layer(act, options, channels_last=True)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(in_features if i == 0 else width, width))
        if norm != "none":
            layers.append(make_norm(width))
        if act != "identity":
            layers.append(make_act(width))
    layers.append(nn.Linear(width, out_features))
    model = nn.Sequential(*layers)
    if eps is not None:
        for module in model.modules():
            if hasattr(module, "eps"):
                module.eps = eps
    return model

"""ResNet feature extractors with torchvision's architecture and parameter names.

Module and parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` …)
are torchvision's, so the state_dict of a ``norm="bn"``, ImageNet-stem, width-64 model loads with
``strict=True`` into ``torchvision.models.resnet50()`` once its ``fc`` is removed. Unlike
torchvision, the base width, the stem, the normalization and the activation are choices, and
there is no classifier: ``forward`` returns the globally pooled features (``num_features`` wide).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[int], nn.Module]  # called with the channel count (PLN as activation needs it)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class _Residual(nn.Module):
    """What the blocks share: the optional SkipInit gain and the zero-init target."""

    def _init_skip(self, skip_init: bool) -> None:
        # SkipInit (De & Smith, 2020): without normalization, scale the residual branch by a
        # learnable scalar initialised at 0, so that the block starts as the identity.
        self.skip_gain = nn.Parameter(torch.zeros(())) if skip_init else None

    def _add(self, branch: Tensor, identity: Tensor) -> Tensor:
        return (branch if self.skip_gain is None else branch * self.skip_gain) + identity


class BasicBlock(_Residual):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        out_act_layer: ActLayer,
        skip_init: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.act2 = out_act_layer(planes)
        self.downsample = downsample
        self._init_skip(skip_init)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self._add(self.bn2(self.conv2(out)), identity))


class Bottleneck(_Residual):
    """1x1 - 3x3 (stride here, "ResNet v1.5" as torchvision) - 1x1 bottleneck block."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        out_act_layer: ActLayer,
        skip_init: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.act3 = out_act_layer(planes * self.expansion)
        self.downsample = downsample
        self._init_skip(skip_init)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.act3(self._add(self.bn3(self.conv3(out)), identity))


class ResNet(nn.Module):
    """ResNet trunk: stem, four stages, global average pooling; no classifier.

    ``cifar_stem=True`` replaces the 7x7/2 convolution and max-pool with a 3x3/1 convolution and no
    pooling (for 32x32 and smaller inputs; without it CIFAR accuracy drops by about 10 points),
    padded by ``cifar_stem_padding`` (1: maps of the input's size; 2: two pixels larger, 34 x 34
    from CIFAR's 32, as the official INTL code (a zero pad of 1, then padding 1) and solo-learn
    (padding 2) build it) and left at torch's default initialisation, as both sources leave it
    (they replace torchvision's ``conv1`` after its Kaiming initialisation).
    ``width`` is the first stage's channel count (64 in the paper); stages use 1, 2, 4, 8 times it.
    Activation modules are separate per position and built with their channel count (unlike
    torchvision's one shared ``relu``), so per-channel activations such as PLN are possible;
    ``out_act_layer`` is the one after each residual addition (default: ``act_layer``).
    ``skip_init`` adds a zero-initialised gain on every residual branch (for ``norm="none"``).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        norm_layer: NormLayer,
        act_layer: ActLayer,
        out_act_layer: ActLayer | None = None,
        width: int = 64,
        cifar_stem: bool = False,
        cifar_stem_padding: int = 1,
        zero_init_residual: bool = False,
        skip_init: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        block_kwargs = dict(
            norm_layer=norm_layer, act_layer=act_layer, out_act_layer=out_act_layer or act_layer, skip_init=skip_init
        )
        self.inplanes = width
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=cifar_stem_padding, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm_layer(width)
        self.act1 = act_layer(width)
        stages = []
        for i, depth in enumerate(layers):
            stages.append(self._make_stage(block, width * 2**i, depth, 1 if i == 0 else 2, block_kwargs))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not (cifar_stem and m is self.conv1):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(m.last_norm, "weight", None) is not None:
                    nn.init.zeros_(m.last_norm.weight)

    def _make_stage(self, block, planes: int, depth: int, stride: int, block_kwargs: dict) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                block_kwargs["norm_layer"](planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample, **block_kwargs)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, None, **block_kwargs) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, before pooling."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.forward_features(x)).flatten(1)


ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}

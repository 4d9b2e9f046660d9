"""Normalization layers, one small class each, that name the axis they normalize.

``channels_last=False`` (the default): channels-first maps (B, C, *spatial) such as a conv net's
NCHW maps; ``channels_last=True``: features on the last axis, such as a
transformer's (B, N, D) tokens, and (B, D). The architecture chooses, through
:func:`spectral_ssl.models.factory.norm_layer`; nothing is guessed from a tensor's shape (with
N == D a wrong guess normalizes across tokens silently). Torch's own BatchNorm and GroupNorm are
channels-first only: :class:`ChannelsLast` hands them the last axis as channels.

Every constructor takes the channel count first and ignores ``device``/``dtype``-style keyword
arguments it does not use, so timm's blocks can call ``norm_layer(C, **kwargs)``. None of them
subclasses ``_BatchNorm``: Lightning's / torch's SyncBatchNorm conversion touches BatchNorm only.
Affine parameters are stored as (C,) vectors, so the ``p.ndim <= 1`` rule of
:func:`spectral_ssl.optim.parameter_groups` spares them weight decay.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spectral import newton_schulz

TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm)
"""torch's normalization layers (timm's models build theirs from them)."""


def is_norm(module: nn.Module) -> bool:
    """True for every normalization layer: torch's (BatchNorm, SyncBN, GroupNorm, LayerNorm,
    RMSNorm, InstanceNorm) and every type the norm registry builds
    (:data:`spectral_ssl.models.factory.NORM_REGISTRY`: PLN, LN-G, IterNorm...), by type, not by
    tensor shape."""
    return isinstance(module, _norm_types())


@functools.cache
def _norm_types() -> tuple[type, ...]:
    """:data:`TORCH_NORMS` and the registry's types, gathered once (the registry imports this module)."""
    from .factory import NORM_REGISTRY

    return TORCH_NORMS + tuple(t for spec in NORM_REGISTRY.values() for t in spec.types)


class _ChannelAffine(nn.Module):
    """Per-channel gamma (1) and beta (0), applied along the channel axis (1, or the last)."""

    def __init__(self, num_channels: int, affine: bool, channels_last: bool = False) -> None:
        super().__init__()
        self.num_channels, self.channels_last = num_channels, channels_last
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def to_last(self, x: Tensor) -> Tensor:
        """``x`` with its channels on the last axis (a view; no copy when they already are)."""
        return x if self.channels_last else x.movedim(1, -1)

    def from_last(self, x: Tensor) -> Tensor:
        return x if self.channels_last else x.movedim(-1, 1)

    def affine(self, x: Tensor) -> Tensor:
        if self.weight is None:
            return x
        shape = (-1,) if self.channels_last else (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class _BlockLayerNorm(_ChannelAffine):
    """Layer norm of contiguous blocks of ``group_size`` channels at every position, then the
    per-channel affine; what PLN and LN-G share."""

    def __init__(
        self, num_channels: int, group_size: int, eps: float, centre: bool, affine: bool, channels_last: bool
    ) -> None:
        super().__init__(num_channels, affine, channels_last)
        if num_channels % group_size:
            divisors = [k for k in range(1, num_channels + 1) if num_channels % k == 0]
            raise ValueError(
                f"{type(self).__name__}: groups of {group_size} channels do not divide {num_channels} channels "
                f"(group sizes that do: {', '.join(map(str, divisors))})"
            )
        self.group_size, self.eps, self.centre = group_size, eps, centre

    def forward(self, x: Tensor) -> Tensor:
        last = self.to_last(x)
        blocks = last.reshape(*last.shape[:-1], self.num_channels // self.group_size, self.group_size)
        # torch's fused kernels over the last axis of the blocks (layer_norm: 2x group_norm's speed here)
        normalize = F.layer_norm if self.centre else F.rms_norm
        normed = normalize(blocks, (self.group_size,), eps=self.eps)
        return self.affine(self.from_last(normed.reshape(last.shape)))


class ParallelLayerNorm(_BlockLayerNorm):
    """PLN, parallel layer normalization, and PLS, its uncentred form (Ni et al., "Parallel Layer
    Normalization for Universal Approximation", arXiv 2505.13142, Sec. 3; the authors'
    Parallel-LN code): at every position (each pixel of a conv map, each token) the C channels are
    split into C / k contiguous blocks of k (the paper's "norm size"), each normalized alone,

        PLN:  y = (x - mean(x)) / sqrt(var(x) + eps)      (biased variance over the block)
        PLS:  y = x / sqrt(mean(x^2) + eps)               (``centre=False``; RMSNorm per block)

    then a per-channel affine (gamma = 1, beta = 0 at init); eps = 1e-5 as in the paper's code.
    k = C is LayerNorm (RMSNorm for PLS); unlike GroupNorm, nothing is pooled over positions.

    k >= 2 for PLN (the paper's theory builds on k = 2: a block (a, b) maps to +-d / sqrt(d^2 +
    eps) with d = (a - b) / 2, a smooth sign whose sharpness is set by eps) and k >= 1 for PLS
    (k = 1: x / sqrt(x^2 + eps), a smooth sign of each channel). The authors recommend k = 8 (16
    in their CNN example). Rank cap: each PLN block sums to zero, so features after PLN have
    covariance rank at most C (1 - 1/k) before the affine's beta (PLS has no such cap). Used as
    the activation itself (the paper's Linear -> PLN -> Linear network has no other nonlinearity)
    by ``create_backbone(norm="pln", act="pln")`` and the ViTs' ``act="pln"``.
    """

    def __init__(
        self,
        num_channels: int,
        group_size: int = 8,
        eps: float = 1e-5,
        centre: bool = True,
        affine: bool = True,
        channels_last: bool = False,
        **_: object,
    ) -> None:
        smallest = 2 if centre else 1
        if group_size < smallest:
            raise ValueError(
                f"{'PLN' if centre else 'PLS'} group_size must be >= {smallest} "
                f"({'a centred block of 1 is 0' if centre else 'a group holds at least one channel'}), got {group_size}"
            )
        super().__init__(num_channels, group_size, eps, centre, affine, channels_last)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, group_size={self.group_size}, eps={self.eps}, centre={self.centre}, "
            f"channels_last={self.channels_last}"
        )


class GroupedLayerNorm(_BlockLayerNorm):
    """LN-G, layer normalization with group partition (Ni et al., "On the Nonlinearity of Layer
    Normalization", ICML 2024, Sec. 4): the channels at each position are split into
    ``num_groups`` groups, each layer-normalized on its own ((x - mean) / sqrt(var + eps),
    biased variance), then a per-channel affine. The same operator as PLN, parameterized by the
    number of groups instead of their size (the paper shows LN is nonlinear and that the
    partition amplifies it); ``num_groups=1`` is LayerNorm. Groups hold at least 2 channels, as
    PLN's blocks; rank cap C - num_groups.
    ``pool_spatial=True`` also pools the statistics over the positions (H x W, or the tokens),
    which is GroupNorm — offered explicitly, never chosen silently.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 8,
        eps: float = 1e-5,
        pool_spatial: bool = False,
        affine: bool = True,
        channels_last: bool = False,
        **_: object,
    ) -> None:
        if num_channels % num_groups or num_channels // num_groups < 2:
            raise ValueError(
                f"LN-G needs num_groups ({num_groups}) to divide the {num_channels} channels into groups of at "
                f"least 2 (a centred group of 1 is 0): num_groups may be "
                + ", ".join(str(g) for g in range(1, num_channels // 2 + 1) if num_channels % g == 0)
            )
        super().__init__(num_channels, num_channels // num_groups, eps, True, affine, channels_last)
        self.num_groups, self.pool_spatial = num_groups, pool_spatial

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_spatial:
            first = x.movedim(-1, 1) if self.channels_last else x
            pooled = F.group_norm(first, self.num_groups, eps=self.eps)
            return self.affine(pooled.movedim(1, -1) if self.channels_last else pooled)
        return super().forward(x)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, pool_spatial={self.pool_spatial}, "
            f"channels_last={self.channels_last}"
        )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels at each position of an NCHW map (timm's / ConvNeXt's
    LayerNorm2d; PLN with k = C). Not GroupNorm(1, C), which also pools over H x W. On
    channels-last features the factory uses torch's ``nn.LayerNorm`` itself."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **_: object) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ChannelsLast(nn.Module):
    """A channels-first norm (torch's BatchNorm, GroupNorm) applied to channels-last features
    (B, N, D) or (B, D): D is handed to it as its channel axis. ``norm``: the wrapped layer (its
    parameters are ``norm.*``; :func:`is_norm` finds it by type)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)


class IterNorm2d(_ChannelAffine):
    """IterNorm layer (Huang et al., "Iterative Normalization: Beyond Standardization towards
    Efficient Whitening", CVPR 2019, Alg. 1; the authors' IterNorm-pytorch code): whitening of
    groups of channels by Newton's iterations, over all positions of the batch.

    Training: per group of ``group_size`` channels (64 in the paper), X (G x m, m = N H W, or
    N x tokens channels-last) centred, Sigma = eps I + Xc Xc^T / m, Sigma_N = Sigma / tr Sigma,
    T = 5 iterations P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2, W = P_T / sqrt(tr Sigma), output
    W Xc, then a per-channel affine; computed in float32 at least. Running EMAs (momentum 0.1)
    of the mean and of W serve in eval mode. ``group_size`` follows the reference code's rule:
    capped at C, then halved until it divides C (96 channels with 64: groups of 32). Differs
    from the authors' code: plain autograd through the iterations (their hand-written backward
    uses removed torch APIs). Statistics are per process under DDP, as the authors'; DDP's
    broadcast_buffers copies rank 0's running statistics to every rank at each forward. Rank:
    full (whitening), up to m.
    """

    def __init__(
        self,
        num_channels: int,
        group_size: int = 64,
        iters: int = 5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        channels_last: bool = False,
        **_: object,
    ) -> None:
        super().__init__(num_channels, affine, channels_last)
        if group_size < 1:
            raise ValueError(f"IterNorm group_size must be >= 1, got {group_size}")
        group_size = min(group_size, num_channels)
        while num_channels % group_size:  # the reference rule
            group_size //= 2
        self.group_size, self.iters, self.eps, self.momentum = group_size, iters, eps, momentum
        groups = num_channels // group_size
        self.register_buffer("running_mean", torch.zeros(groups, group_size, 1))
        self.register_buffer("running_wm", torch.eye(group_size).expand(groups, -1, -1).clone())

    def forward(self, x: Tensor) -> Tensor:
        first = x.movedim(-1, 1) if self.channels_last else x
        n, c = first.shape[:2]
        groups = c // self.group_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            precision = torch.promote_types(x.dtype, torch.float32)  # float32 at least (bf16 / fp16 inputs)
            xg = first.to(precision).transpose(0, 1).reshape(groups, self.group_size, -1)  # (G, g, m)
            if self.training:
                mean = xg.mean(-1, keepdim=True)
                xc = xg - mean
                eye = torch.eye(self.group_size, device=x.device, dtype=precision)
                sigma = self.eps * eye + xc @ xc.transpose(1, 2) / xc.shape[-1]
                trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).view(groups, 1, 1)
                wm = newton_schulz(sigma / trace, self.iters) * trace.rsqrt()
                with torch.no_grad():  # in the buffers' own dtype (bf16 / fp16 after .to() or bf16-true)
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                    self.running_wm.lerp_(wm.to(self.running_wm.dtype), self.momentum)
            else:
                xc, wm = xg - self.running_mean.to(precision), self.running_wm.to(precision)
            out = (wm @ xc).reshape(c, n, *first.shape[2:]).transpose(0, 1).to(x.dtype)
        return self.affine(out.movedim(1, -1) if self.channels_last else out)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, group_size={self.group_size}, iters={self.iters}, eps={self.eps}, "
            f"channels_last={self.channels_last}"
        )

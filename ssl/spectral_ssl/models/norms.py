"""Normalization layers for NCHW feature maps (and (N, C) vectors), one small class each.

Every constructor takes the channel count first and ignores ``device``/``dtype``-style keyword
arguments it does not use, so timm's blocks can call ``norm_layer(C, **kwargs)``. None of them
subclasses ``_BatchNorm``: Lightning's / torch's SyncBatchNorm conversion touches BatchNorm only.
Affine parameters are stored as (C,) vectors, so a ``p.ndim <= 1`` weight-decay filter sees them;
:func:`spectral_ssl.optim.parameter_groups` selects them by module type anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spectral import newton_schulz


def is_norm(module: nn.Module) -> bool:
    """True for every normalization layer: torch's BatchNorm/SyncBN/GroupNorm/LayerNorm/InstanceNorm
    and this module's PLN, LN-G, LayerNorm2d and IterNorm (selected by type, not by tensor shape)."""
    return isinstance(
        module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, _ChannelAffine)
    )


class _ChannelAffine(nn.Module):
    """Per-channel gamma (1) and beta (0), applied along dim 1."""

    def __init__(self, num_channels: int, affine: bool) -> None:
        super().__init__()
        self.num_channels = num_channels
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def affine(self, x: Tensor) -> Tensor:
        if self.weight is None:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class _BlockLayerNorm(_ChannelAffine):
    """Layer norm of contiguous blocks of ``group_size`` channels at every position, then the
    per-channel affine; what PLN and LN-G share."""

    def __init__(self, num_channels: int, group_size: int, eps: float, centre: bool, affine: bool) -> None:
        super().__init__(num_channels, affine)
        if num_channels % group_size:
            raise ValueError(
                f"{type(self).__name__}: groups of {group_size} channels do not divide {num_channels} channels"
            )
        self.group_size, self.eps, self.centre = group_size, eps, centre

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        channels_last = x.movedim(1, -1)
        blocks = channels_last.reshape(-1, c // self.group_size, self.group_size)
        if self.centre:  # group_norm over (groups, k, 1) per row: exactly per-position block LN
            normed = F.group_norm(blocks.reshape(-1, c, 1), c // self.group_size, eps=self.eps)
        else:
            normed = blocks * torch.rsqrt(blocks.square().mean(-1, keepdim=True) + self.eps)
        return self.affine(normed.reshape(channels_last.shape).movedim(-1, 1))


class ParallelLayerNorm(_BlockLayerNorm):
    """PLN, parallel layer normalization (the PLN paper's "norm size" k, Sec. 3).

    At every position (each pixel of a conv map), the C channels are split into C / k contiguous
    blocks of k; each block is normalized on its own, ``(x - mean) / sqrt(var + eps)`` with the
    biased variance, then a per-channel affine (gamma = 1, beta = 0 at init). ``centre=False`` is
    PLS, the RMSNorm analogue ``x / sqrt(mean(x^2) + eps)``. k = C is LayerNorm2d. Unlike
    GroupNorm, nothing is pooled over H x W. The authors recommend k = 8 (16 in their CNN
    example). k must be >= 3: k = 2 outputs exactly +-1 (zero gradient almost everywhere), k = 1
    zeros. Each normalized block sums to zero, so features after PLN have covariance rank at most
    C (1 - 1/k) (before the affine's beta).

    Used as the activation itself (the paper's Linear -> PLN -> Linear network has no other
    nonlinearity) by ``create_backbone(norm="pln", act="pln")``.
    """

    def __init__(
        self,
        num_channels: int,
        group_size: int = 8,
        eps: float = 1e-5,
        centre: bool = True,
        affine: bool = True,
        **_: object,
    ) -> None:
        if group_size < 3:
            raise ValueError(f"PLN group_size must be >= 3 (k=2 is a sign function, k=1 gives zeros), got {group_size}")
        super().__init__(num_channels, group_size, eps, centre, affine)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, group_size={self.group_size}, eps={self.eps}, centre={self.centre}"


class GroupedLayerNorm(_BlockLayerNorm):
    """LN-G, layer normalization with group partition (Ni et al., "On the Nonlinearity of Layer
    Normalization", ICML 2024, Sec. 4): the channels at each position are split into
    ``num_groups`` groups, each layer-normalized on its own, then a per-channel affine. The same
    operator as PLN, parameterized by the number of groups instead of their size (the paper shows
    LN is nonlinear and that the partition amplifies it); ``num_groups=1`` is LayerNorm2d. Groups
    must hold at least 3 channels, as PLN's blocks.
    ``pool_spatial=True`` also pools the statistics over H x W, which is GroupNorm — offered
    explicitly, never chosen silently.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 8,
        eps: float = 1e-5,
        pool_spatial: bool = False,
        affine: bool = True,
        **_: object,
    ) -> None:
        if num_channels % num_groups or num_channels // num_groups < 3:
            raise ValueError(
                f"LN-G needs num_groups ({num_groups}) to divide the {num_channels} channels into "
                "groups of at least 3 (groups of 2 output +-1: a sign function)"
            )
        super().__init__(num_channels, num_channels // num_groups, eps, True, affine)
        self.num_groups, self.pool_spatial = num_groups, pool_spatial

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_spatial:
            return self.affine(F.group_norm(x, self.num_groups, eps=self.eps))
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, pool_spatial={self.pool_spatial}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels at each position of an NCHW map (timm's / ConvNeXt's
    LayerNorm2d; PLN with k = C). Not GroupNorm(1, C), which also pools over H x W."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, **_: object) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class IterNorm2d(_ChannelAffine):
    """IterNorm layer (Huang et al., "Iterative Normalization: Beyond Standardization towards
    Efficient Whitening", CVPR 2019, Alg. 1): whitening of groups of channels by Newton's
    iterations.

    Training: per group of ``group_size`` channels (64 in the paper), X (G x m, m = N H W)
    centred, Sigma = eps I + Xc Xc^T / m, Sigma_N = Sigma / tr Sigma, T = 5 iterations
    P_{k+1} = (3 P_k - P_k^3 Sigma_N) / 2, W = P_T / sqrt(tr Sigma), output W Xc, then a
    per-channel affine. Running EMAs (momentum 0.1) of the mean and of W serve in eval mode.
    Differs from the authors' code: plain autograd through the iterations in float32 (their
    hand-written backward uses removed torch APIs), and ``group_size`` must divide C (the
    authors let the last group take the remaining channels). Statistics are per process under
    DDP, as the authors'; DDP's broadcast_buffers copies rank 0's running statistics to every
    rank at each forward.
    """

    def __init__(
        self,
        num_channels: int,
        group_size: int = 64,
        iters: int = 5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        **_: object,
    ) -> None:
        super().__init__(num_channels, affine)
        group_size = min(group_size, num_channels)
        if num_channels % group_size:
            raise ValueError(f"IterNorm group_size {group_size} must divide the {num_channels} channels")
        self.group_size, self.iters, self.eps, self.momentum = group_size, iters, eps, momentum
        groups = num_channels // group_size
        self.register_buffer("running_mean", torch.zeros(groups, group_size, 1))
        self.register_buffer("running_wm", torch.eye(group_size).expand(groups, -1, -1).clone())

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        groups = c // self.group_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            xg = x.float().transpose(0, 1).reshape(groups, self.group_size, -1)  # (G, g, m)
            if self.training:
                mean = xg.mean(-1, keepdim=True)
                xc = xg - mean
                eye = torch.eye(self.group_size, device=x.device)
                sigma = self.eps * eye + xc @ xc.transpose(1, 2) / xc.shape[-1]
                trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).view(groups, 1, 1)
                wm = newton_schulz(sigma / trace, self.iters) * trace.rsqrt()
                with torch.no_grad():
                    self.running_mean.lerp_(mean, self.momentum)
                    self.running_wm.lerp_(wm, self.momentum)
            else:
                xc, wm = xg - self.running_mean, self.running_wm
            out = (wm @ xc).reshape(c, n, *x.shape[2:]).transpose(0, 1)
        return self.affine(out.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, group_size={self.group_size}, iters={self.iters}, eps={self.eps}"

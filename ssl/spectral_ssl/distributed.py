"""Collective helpers that work with and without a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group, 1 when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group, 0 when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous share ``[start, end)`` of ``n`` items: rank r of W takes
    ``[n r / W, n (r + 1) / W)``, so the shards in rank order are the items in order, each once."""
    w, r = world_size(), rank()
    return n * r // w, n * (r + 1) // w


def backend_device() -> torch.device:
    """Where tensors must be for the default group's collectives (CUDA for NCCL, else the CPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(x: Tensor) -> Tensor:
    """Concatenation in rank order of every rank's ``x``, whose first dimension may differ between
    ranks; ``x`` itself when not running distributed. The result is on ``x``'s device."""
    if world_size() == 1:
        return x
    device = backend_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=device))
    longest = int(max(sizes))
    padded = torch.zeros(longest, *x.shape[1:], dtype=x.dtype, device=device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)]).to(x.device)


def all_reduce(x: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """``x`` reduced over the ranks (a new tensor on ``x``'s device), moved through the device the
    default group's collectives need."""
    y = x.to(backend_device())
    dist.all_reduce(y, op=op)
    return y.to(x.device)


def total_over_ranks(count: int) -> int:
    """The sum of every rank's ``count`` (rows each holds of a sharded set); ``count`` itself when
    not running distributed."""
    if world_size() == 1:
        return count
    return int(all_reduce(torch.tensor([count])).item())


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sends each rank the gradient of its own slice.

    Every rank computes the same loss over the gathered batch, so the gradient reaching rank r's
    slice is the sum over ranks of their (identical) upstream gradients; DDP then averages the
    parameter gradients over ranks, which gives exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks (same shape on each), differentiably; identity alone."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)

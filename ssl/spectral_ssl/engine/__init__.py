"""How the training step runs, apart from what it computes (that is :mod:`spectral_ssl.methods`):
channels-last layout and ``torch.compile`` as callbacks, the whole step as one CUDA graph as a
Lightning strategy, all built from the commands' ``speed:`` section (:class:`SpeedOptions`).
Switching any of them on changes no method and no result beyond floating-point rounding."""

from .graphed import CUDAGraphStrategy, GraphedStep, ViewsStep, autocast_without_cache
from .speed import ChannelsLast, Compile, SpeedOptions, compiler_works

__all__ = [
    "CUDAGraphStrategy",
    "ChannelsLast",
    "Compile",
    "GraphedStep",
    "SpeedOptions",
    "ViewsStep",
    "autocast_without_cache",
    "compiler_works",
]

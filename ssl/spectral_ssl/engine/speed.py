"""Speed options that change no result beyond floating-point rounding, as Lightning callbacks
acting in place on a module's submodules (parameter names, checkpoints and export unchanged), and
:class:`SpeedOptions`, the commands' ``speed:`` section that builds them and the graphed step."""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from .graphed import CUDAGraphStrategy


@dataclass(frozen=True)
class SpeedOptions:
    """How the training step runs (``--speed.<key>``).

    ``channels_last``: NHWC memory format for the backbone and its inputs (the fast layout for
    convolutions in bf16 on GPUs; :class:`ChannelsLast`). ``compile``: ``torch.compile`` of
    backbone and projector in place; where compilation fails (no compiler on the machine, an
    unsupported op) the run says so once and continues eagerly (:class:`Compile`). Mixed
    precision is the trainer's: ``--trainer.precision=bf16-mixed`` (whitening, trace loss and the
    other losses always run in float32).

    ``cuda_graph``: the whole step (forward, loss, backward, optimizer step) captured as one CUDA
    graph after ``cuda_graph_warmup`` eager steps and replayed for every batch, so the GPU no
    longer waits for Python to issue kernels (:class:`~spectral_ssl.engine.graphed.CUDAGraphStrategy`;
    one device; its limits are listed there). On a CPU the same path runs eagerly.
    """

    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    cuda_graph_warmup: int = 3

    def callbacks(self) -> list[L.Callback]:
        return [*([ChannelsLast()] if self.channels_last else []), *([Compile()] if self.compile else [])]

    def trainer_arguments(self, accelerator="auto", devices="auto", num_nodes: int = 1, strategy="auto") -> dict:
        """The Trainer arguments ``cuda_graph`` sets, given the trainer's own: its strategy on the
        one device, or a refusal naming what makes more than one."""
        if not self.cuda_graph:
            return {}
        one_device = devices in ("auto", 1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
        problems = [
            what
            for what, bad in (
                (f"trainer.devices={devices}", not one_device),
                (f"trainer.num_nodes={num_nodes}", num_nodes != 1),
                (f"trainer.strategy={strategy}", strategy not in (None, "auto")),
                (f"{os.environ.get('WORLD_SIZE')} processes", int(os.environ.get("WORLD_SIZE", "1")) > 1),
            )
            if bad
        ]
        if problems:
            raise ValueError(
                f"speed.cuda_graph=true cannot be used with {'; '.join(problems)}: it runs on one device "
                "(multi-GPU runs use speed.compile and speed.channels_last). Set speed.cuda_graph=false."
            )
        index = devices[0] if isinstance(devices, (list, tuple)) else 0
        cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        device = torch.device("cuda", index) if cuda else torch.device("cpu")
        return {
            "strategy": CUDAGraphStrategy(device, warmup_steps=self.cuda_graph_warmup),
            "devices": [index] if cuda else 1,
        }


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


class _OncePerSubmodule(L.Callback):
    """At setup (of every stage), :meth:`apply` to each of the module's ``submodules`` not done yet."""

    def __init__(self, submodules: Sequence[str]) -> None:
        self.submodules, self._done = tuple(submodules), weakref.WeakSet()

    def apply(self, module: nn.Module) -> None:
        raise NotImplementedError

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name in self.submodules:
            module = getattr(pl_module, name, None)
            if isinstance(module, nn.Module) and module not in self._done:
                self.apply(module)
                self._done.add(module)


class ChannelsLast(_OncePerSubmodule):
    """At setup, the module's ``submodules`` (default: the backbone) in NHWC memory format, and
    their image inputs made NHWC by a forward pre-hook (training and evaluation alike)."""

    def __init__(self, submodules: Sequence[str] = ("backbone",)) -> None:
        super().__init__(submodules)

    def apply(self, module: nn.Module) -> None:
        module.to(memory_format=torch.channels_last)
        module.register_forward_pre_hook(_channels_last_input)


class Compile(_OncePerSubmodule):
    """At setup, ``module.compile()`` of the module's ``submodules`` in place (their calls go
    through ``torch.compile``; parameters and state_dict stay the same objects), when
    :func:`compiler_works` here; else they stay eager, with one warning."""

    def __init__(
        self, submodules: Sequence[str] = ("backbone", "projector"), backend="inductor", mode: str | None = None
    ) -> None:
        super().__init__(submodules)
        self.backend, self.mode = backend, mode
        self.available: bool | None = None  # probed at the first submodule

    def apply(self, module: nn.Module) -> None:
        options = {"backend": self.backend, "mode": self.mode}
        if self.available is None:
            self.available = compiler_works(next(module.parameters(), torch.empty(0)).device, **options)
        if self.available:
            module.compile(**options)


def compiler_works(device: torch.device, **options) -> bool:
    """Whether ``torch.compile(**options)`` works here: a two-op function is compiled and run on
    ``device``. When that fails (no C++ compiler, no Triton, a backend's error), one warning says
    so and returns False."""
    try:
        torch.compile(_probe, **options)(torch.ones(2, device=device))
    except Exception as error:  # the backend's own error, whatever its type
        cause = getattr(error, "inner_exception", None) or error
        lines = str(cause).strip().splitlines()
        rank_zero_warn(
            f"torch.compile is unavailable here ({type(cause).__name__}: {lines[0] if lines else ''}); "
            "continuing without compilation (set speed.compile=false to skip the attempt)"
        )
        return False
    return True


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * 2

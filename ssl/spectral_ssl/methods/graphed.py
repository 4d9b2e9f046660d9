"""The whole training step as one CUDA graph: forward, loss, backward and optimizer step recorded
once and replayed for every batch, so the step no longer waits for the CPU to issue its kernels.

PyTorch's "whole-network capture" (torch.cuda.graphs): a few eager warm-up steps on the stream
that will capture (lazy initialization, cuDNN/cuBLAS setup and the optimizer's state happen there,
not inside the capture), then one capture with the gradients set to None so that backward
allocates them in the graph's memory pool, then one replay per batch after copying the batch into
the static input buffers. The learning rate is a device tensor that the scheduler fills in place,
so the captured optimizer sees every new value.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import Tensor

Step = Callable[[Sequence[Tensor]], dict[str, Tensor]]


def autocast_without_cache(device_type: str):
    """The autocast state in force, with its weight-cast cache off: a cache filled during a capture
    would hold casts the graph never recomputes (torch's rule for autocast inside CUDA graphs)."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)


class GraphedStep:
    """Runs ``step(views) -> {"loss": ..., **parts}`` (which must do forward, backward and the
    optimizer step itself) as a CUDA graph on CUDA tensors.

    The first ``warmup_steps`` calls run eagerly on the capture stream; the next one captures and
    replays. A batch whose view shapes differ from the captured ones (a different crop size, a
    smaller last batch) runs eagerly, as every call does on a CPU, where there are no graphs.
    ``zero_grad`` clears the gradients to None before each eager step and before the capture.
    Returns the step's outputs, detached copies that outlive the next replay.
    """

    def __init__(self, step: Step, zero_grad: Callable[[], None], warmup_steps: int = 3) -> None:
        if warmup_steps < 1:
            raise ValueError("cuda_graph_warmup must be >= 1: the optimizer's state has to exist before the capture")
        self.step, self.zero_grad, self.warmup_steps = step, zero_grad, warmup_steps
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_views: list[Tensor] = []
        self.static_outputs: dict[str, Tensor] = {}
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        if views[0].device.type != "cuda":
            return self._eager(views)
        if self.graph is not None and self._matches(views):
            for static, view in zip(self.static_views, views):
                static.copy_(view, non_blocking=True)
            self.graph.replay()
            return {name: value.clone() for name, value in self.static_outputs.items()}
        if self.graph is None and self.eager_steps >= self.warmup_steps:
            return self._capture(views)
        return self._on_capture_stream(lambda: self._eager(views))

    def _matches(self, views: Sequence[Tensor]) -> bool:
        return len(views) == len(self.static_views) and all(
            v.shape == s.shape and v.dtype == s.dtype and v.stride() == s.stride()
            for v, s in zip(views, self.static_views))

    def _eager(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        self.zero_grad()
        outputs = self.step(views)
        self.eager_steps += 1
        return {name: value.detach() for name, value in outputs.items()}

    def _on_capture_stream(self, fn):
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            result = fn()
        current.wait_stream(self._stream)
        return {name: value.clone() for name, value in result.items()}  # read on the current stream

    def _capture(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        self.static_views = [view.clone() for view in views]
        torch.cuda.synchronize()
        self.zero_grad()  # backward allocates the gradients inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may allocate while this thread captures
        with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
            outputs = self.step(self.static_views)
            self.static_outputs = {name: value.detach() for name, value in outputs.items()}
        self.graph = graph
        graph.replay()  # the capture only recorded this batch's step; run it
        return {name: value.clone() for name, value in self.static_outputs.items()}

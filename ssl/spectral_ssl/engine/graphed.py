"""The whole training step as one CUDA graph: forward, loss, backward and optimizer step recorded
once and replayed for every batch, so the step no longer waits for the CPU to issue its kernels.

PyTorch's "whole-network capture" (torch.cuda.graphs): a few eager warm-up steps on the stream
that will capture (lazy initialization, cuDNN/cuBLAS setup and the optimizer's state happen there,
not inside the capture), then one capture with the gradients set to None so that backward
allocates them in the graph's memory pool, then one replay per batch after copying the batch into
the static input buffers. The learning rate is a device tensor that the scheduler fills in place,
so the captured optimizer sees every new value.

:class:`CUDAGraphStrategy` runs a method's training step this way inside Lightning's loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


@runtime_checkable
class ViewsStep(Protocol):
    """What :class:`CUDAGraphStrategy` needs of the module (:class:`~spectral_ssl.methods.SSLMethod`
    has it): a training step that is exactly views -> ``compute_loss`` -> check -> log
    (``views_step``), the forward returning what it made (``{"loss", **parts, "features"}``),
    ``log_outputs``, ``nonfinite_error`` and ``host_sync`` (why the loss waits for the host; None
    when it never does, the loss modules' own declaration)."""

    views_step: bool
    host_sync: str | None

    def compute_loss(self, views: Sequence[Tensor]) -> dict[str, Tensor]: ...

    def log_outputs(self, outputs: dict[str, Tensor], prog_bar: bool = True) -> None: ...

    def nonfinite_error(self, what: str) -> Exception: ...


LR_DTYPE = torch.float32
"""The learning rate of a graphed step, a device tensor: what fused CUDA optimizers read."""

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
            for v, s in zip(views, self.static_views)
        )

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


class CUDAGraphStrategy(SingleDeviceStrategy):
    """Lightning's single-device strategy, with each training step of a
    :class:`ViewsStep` module (an :class:`~spectral_ssl.methods.SSLMethod`) run as one
    :class:`GraphedStep`: the module's ``compute_loss(views)`` under the trainer's precision,
    backward and the optimizer step, captured once and replayed. The module is unchanged;
    ``speed.cuda_graph=true`` chooses this strategy. Training is the same as Lightning's own path
    up to the float32 rounding of the learning rate (bitwise with a float64 one: see the tests).

    What it needs: SGD or Adam (the learning rate becomes a device tensor the scheduler fills in
    place; Adam is made ``capturable``), no gradient accumulation or clipping, no fp16 loss
    scaling, and a loss that never waits for the host (a criterion with a ``host_sync`` reason,
    such as W-MSE's or the eigendecomposition ST, is refused). A non-finite loss is noted on the
    device and reported every ``log_every_n_steps`` steps and before any checkpoint is written,
    instead of at once, so the step never waits for the GPU.
    """

    def __init__(self, device: torch.device | str = "cuda", warmup_steps: int = 3, **kwargs: Any) -> None:
        super().__init__(device=device, **kwargs)
        self.warmup_steps = warmup_steps
        self.graphed: GraphedStep | None = None
        self._first_nonfinite: Tensor | None = None

    def setup_optimizers(self, trainer: L.Trainer) -> None:
        super().setup_optimizers(trainer)
        self._refuse_what_cannot_be_captured(trainer)
        self._learning_rates_on_device()
        if self.root_device.type != "cuda":
            rank_zero_warn("speed.cuda_graph: no CUDA device, so the step runs eagerly (same results)")
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.root_device)
        self.graphed = GraphedStep(self._whole_step, self._zero_grad, self.warmup_steps)

    def _refuse_what_cannot_be_captured(self, trainer: L.Trainer) -> None:
        module, problems = self.lightning_module, []
        if not isinstance(module, ViewsStep) or not module.views_step:
            problems.append(f"{type(module).__name__} (the graph runs a views -> loss step, ViewsStep)")
        if trainer.accumulate_grad_batches != 1:
            problems.append("trainer.accumulate_grad_batches > 1")
        if trainer.gradient_clip_val:
            problems.append("trainer.gradient_clip_val")
        if trainer.precision == "16-mixed":
            problems.append("trainer.precision=16-mixed (fp16 loss scaling waits for the host; use bf16-mixed)")
        for optimizer in self.optimizers:
            if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam):
                problems.append(
                    f"optimizer {type(optimizer).__name__} (SGD and Adam take the learning rate as a device tensor)"
                )
        if isinstance(module, ViewsStep) and module.host_sync is not None:
            problems.append(module.host_sync)
        if problems:
            raise ValueError(
                "speed.cuda_graph=true cannot be used with " + "; ".join(problems) + ". Set speed.cuda_graph=false."
            )

    def _learning_rates_on_device(self) -> None:
        """Each group's lr as a device tensor (again after a checkpoint's optimizer state replaced it)."""
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=LR_DTYPE, device=self.root_device)
                if isinstance(optimizer, torch.optim.Adam) and self.root_device.type == "cuda":
                    group["capturable"] = True

    def on_train_start(self) -> None:
        super().on_train_start()
        self._learning_rates_on_device()

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _whole_step(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        """Forward and loss under the trainer's precision, backward, optimizer step: what is captured."""
        with self.precision_plugin.train_step_context(), autocast_without_cache(self.root_device.type):
            outputs = self.lightning_module.compute_loss(views)
        outputs["loss"].backward()
        for optimizer in self.optimizers:
            optimizer.step()
        return outputs

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        module = self.lightning_module
        outputs = self.graphed(batch[0])
        loss, step = outputs["loss"], module.global_step
        self._first_nonfinite = torch.where(
            (self._first_nonfinite < 0) & ~torch.isfinite(loss), step, self._first_nonfinite
        )
        module.log_outputs(outputs, prog_bar=False)  # a progress bar would wait for the GPU
        if step % module.trainer.log_every_n_steps == 0:
            self.raise_if_nonfinite()
        return outputs  # Lightning's closure calls backward and the optimizer step: done above

    def backward(self, closure_loss: Tensor, optimizer, *args: Any, **kwargs: Any) -> Tensor:
        return closure_loss

    def optimizer_step(self, optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        return closure()  # runs training_step, whose graph has already updated the parameters

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        self.raise_if_nonfinite()  # never save parameters a non-finite loss has touched
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()
        super().on_train_end()

    def raise_if_nonfinite(self) -> None:
        if self._first_nonfinite is None:
            return
        step = int(self._first_nonfinite)  # waits for the device
        if step >= 0:
            raise self.lightning_module.nonfinite_error(f"the loss became non-finite at step {step}")

"""The one LightningModule that owns pretraining; methods only turn views into a loss."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch import Tensor

from ..data.base import SkippedImagesReport
from ..models import BackboneConfig, Projector
from ..models.trainable import Trainable, set_trainable
from ..optim import OptimizerConfig, WarmupCosine, build_optimizer
from .graphed import GraphedStep, autocast_without_cache
from .momentum import MomentumTarget, cosine_momentum


GRAPHED_LR_DTYPE = torch.float32  # the device learning rate of a graphed step: what fused CUDA optimizers read


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """How the training step runs (results are the same up to floating-point rounding).

    ``channels_last``: NHWC memory format for the backbone and its inputs (the fast layout for
    convolutions in bf16 on GPUs). ``compile``: ``torch.compile`` of backbone and projector in
    place (parameter names, checkpoints and export unchanged); where compilation fails (no
    compiler on the machine, an unsupported op) the run says so once and continues eagerly.
    Mixed precision is the trainer's: ``--trainer.precision=bf16-mixed`` (whitening, trace
    loss and the other losses always run in float32).

    ``cuda_graph``: the whole step (forward, loss, backward, optimizer step) is captured as one
    CUDA graph after ``cuda_graph_warmup`` eager steps and replayed for every batch
    (:class:`~spectral_ssl.methods.graphed.GraphedStep`), so the GPU no longer waits for Python to
    issue kernels. One device, SGD or Adam, no gradient accumulation or clipping, no fp16 loss
    scaling; a method whose loss needs the host each step (W-MSE, ST with ``method="eigh"``)
    refuses it. A non-finite loss is then detected every ``log_every_n_steps`` steps and before
    any checkpoint is written, instead of at once, so the step never waits for the GPU. On a CPU
    the same path runs eagerly.
    """

    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    cuda_graph_warmup: int = 3


def _config(cls, value):
    """Accepts a config dataclass or the plain dict it was saved as in a checkpoint."""
    return cls(**value) if isinstance(value, dict) else value


class SSLMethod(L.LightningModule):
    """Backbone + projector trained on V >= 2 augmented views of each image.

    Owns the training step (views -> embeddings -> ``compute_loss`` -> logging, with a clear error
    on a non-finite loss), the optimizer and its warm-up + cosine schedule, and checkpointable
    hyperparameters (saved as plain values, so checkpoints load with ``weights_only=True``).
    A method subclasses this and sets ``self.criterion`` (or overrides :meth:`compute_loss`); one
    with a momentum encoder calls :meth:`add_momentum_target`, and the base updates it every step.

    ``projector_dims``: hidden widths then the embedding width, e.g. [2048, 2048, 2048].
    ``trainable``: ``all``, ``norm_only`` (only the backbone's normalization parameters train; all
    other weights stay at their seeded random initialization) or ``norm_and_head`` (those and the
    projector); see :func:`spectral_ssl.models.trainable.set_trainable`.
    """

    def __init__(self, backbone: BackboneConfig = BackboneConfig(), projector_dims: Sequence[int] = (2048, 2048, 2048),
                 optimizer: OptimizerConfig = OptimizerConfig(), trainable: Trainable = "all",
                 speed: SpeedOptions = SpeedOptions()) -> None:
        super().__init__()
        backbone, optimizer = _config(BackboneConfig, backbone), _config(OptimizerConfig, optimizer)
        self.speed = _config(SpeedOptions, speed)
        if len(projector_dims) < 1:
            raise ValueError("projector_dims needs at least the embedding width")
        self.save_hyperparameters()
        self.hparams.update(backbone=dataclasses.asdict(backbone), optimizer=dataclasses.asdict(optimizer),
                            projector_dims=list(projector_dims), speed=dataclasses.asdict(self.speed))
        self.optimizer_config = optimizer
        self.backbone = backbone.build()
        self.projector = Projector(self.backbone.num_features, projector_dims[:-1], projector_dims[-1])
        self.trainable = trainable
        self.target: MomentumTarget | None = None  # see add_momentum_target
        self.graphed_step: GraphedStep | None = None  # speed.cuda_graph, built at fit start
        self.step_features: Tensor | None = None  # backbone features of the first embedded view, this step
        self.num_trainable, self.num_parameters = set_trainable(self.backbone, [self.projector], trainable)

    def add_momentum_target(self, base_momentum: float, final_momentum: float = 1.0) -> None:
        """An EMA copy of backbone + projector, its momentum raised from ``base_momentum`` to
        ``final_momentum`` by a cosine over training (:func:`cosine_momentum`), updated after
        every optimizer step."""
        self.target = MomentumTarget(self.backbone, self.projector)
        self.momentum_range = (base_momentum, final_momentum)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.target is not None:
            momentum = cosine_momentum(self.global_step, int(self.trainer.estimated_stepping_batches),
                                       *self.momentum_range)
            self.target.update([self.backbone, self.projector], momentum)
        if self.graphed_step is not None and self.global_step % self.trainer.log_every_n_steps == 0:
            self._raise_if_nonfinite()

    def configure_callbacks(self):
        return [SkippedImagesReport()]

    def on_fit_start(self) -> None:
        self.print(f"trainable={self.trainable}: {self.num_trainable:,} of {self.num_parameters:,} parameters train")
        if self.logger is not None:
            self.logger.log_metrics({"params/trainable": self.num_trainable, "params/total": self.num_parameters}, step=0)

    def graph_blocker(self) -> str | None:
        """Why this method's step cannot be a CUDA graph (None: it can). Methods whose loss needs
        the host every step override it."""
        return None

    def _start_graphed_step(self) -> None:
        trainer, problems = self.trainer, []
        if trainer.world_size > 1:
            problems.append(f"{trainer.world_size} processes (it runs on one device; multi-GPU runs use "
                            "model.speed.compile and channels_last)")
        if trainer.accumulate_grad_batches != 1:
            problems.append("trainer.accumulate_grad_batches > 1")
        if trainer.gradient_clip_val:
            problems.append("trainer.gradient_clip_val")
        if trainer.precision == "16-mixed":
            problems.append("trainer.precision=16-mixed (fp16 loss scaling waits for the host; use bf16-mixed)")
        if self.optimizer_config.name not in ("sgd", "adam"):
            problems.append(f"optimizer {self.optimizer_config.name!r} (sgd and adam take the learning rate as a "
                            "device tensor)")
        if (reason := self.graph_blocker()) is not None:
            problems.append(reason)
        if problems:
            raise ValueError("model.speed.cuda_graph=true cannot be used with " + "; ".join(problems)
                             + ". Set model.speed.cuda_graph=false.")
        if self.device.type != "cuda":
            rank_zero_warn("model.speed.cuda_graph: no CUDA device, so the step runs eagerly (same results)")
        # the step returns None to Lightning once it has run backward and the optimizer itself
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
        self.graphed_step = GraphedStep(self._whole_step, self._zero_grad, self.speed.cuda_graph_warmup)

    def on_train_start(self) -> None:
        self._plan_schedule()
        if self.graphed_step is not None:  # a resumed optimizer state brings its own lr: keep it a device tensor
            for group in self.optimizers().optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=GRAPHED_LR_DTYPE, device=self.device)

    def _zero_grad(self) -> None:
        self.optimizers().optimizer.zero_grad(set_to_none=True)

    def _whole_step(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        """Forward, loss, backward and optimizer step: what :class:`GraphedStep` captures."""
        with autocast_without_cache(self.device.type):
            parts = self.compute_loss(views)
        with torch.autocast(self.device.type, enabled=False):
            parts["loss"].backward()
        self.optimizers().optimizer.step()
        return {**parts, "step_features": self.step_features}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if self.graphed_step is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()  # runs training_step, whose graphed step already updated the parameters

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        if self.graphed_step is None:  # else the graphed step clears what it needs
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_train_epoch_end(self) -> None:
        if self.graphed_step is not None:
            self._raise_if_nonfinite()

    def on_save_checkpoint(self, checkpoint) -> None:
        if self.graphed_step is not None:
            self._raise_if_nonfinite()  # never save parameters a non-finite loss has touched

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features (what evaluation and export use)."""
        return self.backbone(images)

    def configure_model(self) -> None:
        if self.speed.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.speed.compile and not getattr(self, "_compiled", False):
            self.backbone.compile()
            self.projector.compile()
            self._compiled = True

    def embed(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Projector outputs of each view (views may differ in resolution)."""
        if self.speed.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        def apply():
            features = [self.backbone(v) for v in views]
            return features, [self.projector(f) for f in features]

        try:
            features, embeddings = apply()
        except torch._dynamo.exc.TorchDynamoException as error:  # compile errors, inductor's included
            if not getattr(self, "_compiled", False):
                raise
            self._uncompile(error)
            features, embeddings = apply()
        self.step_features = features[0].detach()  # for the online probe
        return embeddings

    def _uncompile(self, error: Exception) -> None:
        message = str(error).strip().splitlines()
        rank_zero_warn(f"torch.compile is unavailable here ({type(error).__name__}: {message[0] if message else ''}); "
                       "continuing without compilation (set model.speed.compile=false to skip the attempt)")
        for module in (self.backbone, self.projector):
            module._compiled_call_impl = None
        self._compiled = False

    def compute_loss(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        """Returns {"loss": scalar, **parts to log}: by default ``self.criterion`` (a loss module
        from :mod:`spectral_ssl.losses`, set by the method) applied to the embeddings of the views."""
        return self.criterion(self.embed(views))

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        views, _ = batch
        self.step_features = None
        if self.graphed_step is None:
            return self.log_parts(self.compute_loss(views))
        outputs = self.graphed_step(views)
        self.step_features = outputs.pop("step_features")
        self.log_parts(outputs)
        return None  # backward and the optimizer step are done (see optimizer_step)

    def log_parts(self, parts: dict[str, Tensor]) -> Tensor:
        """Logs the loss and its parts; a non-finite loss stops training with a clear error (with a
        CUDA graph: a device-side note checked every ``log_every_n_steps`` and before saving)."""
        loss = parts["loss"]
        if self.graphed_step is not None:
            self._first_nonfinite = torch.where((self._first_nonfinite < 0) & ~torch.isfinite(loss),
                                                self.global_step, self._first_nonfinite)
        elif not torch.isfinite(loss):
            raise self._nonfinite_error(
                f"the loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); parts: "
                f"{ {k: float(v.detach()) for k, v in parts.items()} }")
        self.log("train/loss", loss, prog_bar=self.graphed_step is None)  # a progress bar would wait for the GPU
        self.log_dict({f"train/{name}": value for name, value in parts.items() if name != "loss"})
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def _raise_if_nonfinite(self) -> None:
        step = int(self._first_nonfinite)  # waits for the device
        if step >= 0:
            raise self._nonfinite_error(f"the loss became non-finite at step {step}")

    def _nonfinite_error(self, what: str) -> FloatingPointError:
        return FloatingPointError(
            f"{type(self).__name__}: {what}. Nothing was saved from that step on; the last checkpoint is intact. "
            "Lower the learning rate, check the input data, or disable mixed precision, then run the same command "
            "to resume.")

    def global_batch_size(self) -> int:
        trainer = self.trainer
        per_device = getattr(trainer.datamodule, "batch_size", None)
        if per_device is None:
            raise AttributeError("the datamodule must expose batch_size (per device) to scale the learning rate")
        return per_device * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self):
        config = self.optimizer_config
        lr = config.lr * self.global_batch_size() / 256
        if self.speed.cuda_graph:  # the scheduler fills it in place; the captured optimizer step reads it
            self._start_graphed_step()
            lr = torch.tensor(lr, dtype=GRAPHED_LR_DTYPE, device=self.device)
        optimizer = build_optimizer(self, config, lr, capturable=self.speed.cuda_graph and self.device.type == "cuda")
        # planned at train start: estimated_stepping_batches here would build the training loader before a
        # checkpoint is restored, and Lightning would then never resume it mid-epoch (Lightning issue #20550)
        scheduler = WarmupCosine(optimizer, min_lr_ratio=config.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _plan_schedule(self) -> None:
        """Warm-up and length of the lr schedule from the trainer's data (see configure_optimizers)."""
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        warmup = round(self.optimizer_config.warmup_epochs * total / epochs) if epochs else 0
        self.lr_schedulers().plan(warmup, total, steps_per_epoch)

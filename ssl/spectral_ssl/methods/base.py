"""The one LightningModule that owns pretraining; methods only turn views into a loss."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch import Tensor

from ..data.base import SkippedImagesReport
from ..models import BackboneConfig, Projector
from ..models.trainable import Trainable, set_trainable
from ..optim import OptimizerConfig, build_optimizer, warmup_cosine
from .momentum import MomentumTarget, cosine_momentum


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """How the training step runs (results are the same up to floating-point rounding).

    ``channels_last``: NHWC memory format for the backbone and its inputs (the fast layout for
    convolutions in bf16 on GPUs). ``compile``: ``torch.compile`` of backbone and projector in
    place (parameter names, checkpoints and export unchanged); where compilation fails (no
    compiler on the machine, an unsupported op) the run says so once and continues eagerly.
    Mixed precision is the trainer's: ``--trainer.precision=bf16-mixed`` (whitening, trace
    loss and the other losses always run in float32).
    """

    channels_last: bool = False
    compile: bool = False


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

    def configure_callbacks(self):
        return [SkippedImagesReport()]

    def on_fit_start(self) -> None:
        self.print(f"trainable={self.trainable}: {self.num_trainable:,} of {self.num_parameters:,} parameters train")
        if self.logger is not None:
            self.logger.log_metrics({"params/trainable": self.num_trainable, "params/total": self.num_parameters}, step=0)

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
        try:
            return [self.projector(self.backbone(v)) for v in views]
        except torch._dynamo.exc.TorchDynamoException as error:  # compile errors, inductor's included
            if not getattr(self, "_compiled", False):
                raise
            self._uncompile(error)
            return [self.projector(self.backbone(v)) for v in views]

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

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, _ = batch
        return self.log_parts(self.compute_loss(views))

    def log_parts(self, parts: dict[str, Tensor]) -> Tensor:
        """Logs the loss and its parts; a non-finite loss stops training with a clear error."""
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{type(self).__name__}: the loss is {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch}); parts: { {k: float(v.detach()) for k, v in parts.items()} }. Nothing was saved "
                "from this step on; the last checkpoint is intact. Lower the learning rate, check the input "
                "data, or disable mixed precision, then run the same command to resume.")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{name}": value for name, value in parts.items() if name != "loss"})
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def global_batch_size(self) -> int:
        trainer = self.trainer
        per_device = getattr(trainer.datamodule, "batch_size", None)
        if per_device is None:
            raise AttributeError("the datamodule must expose batch_size (per device) to scale the learning rate")
        return per_device * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self):
        config = self.optimizer_config
        lr = config.lr * self.global_batch_size() / 256
        optimizer = build_optimizer(self, config, lr)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else None
        warmup = round(config.warmup_epochs * total / epochs) if epochs else 0
        scheduler = warmup_cosine(optimizer, warmup_steps=warmup, total_steps=total, min_lr_ratio=config.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

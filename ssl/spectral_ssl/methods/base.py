"""The one LightningModule that owns pretraining; methods only turn views into a loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..checkpoints import backbone_weights
from ..models import BackboneConfig, Projector
from ..models.trainable import Trainable, set_trainable
from ..optim import OptimizerConfig, WarmupCosine, build_optimizer, planned_steps, scaled_lr, steps_per_epoch
from .momentum import MomentumTarget, cosine_momentum


def _config(cls, value):
    """Accepts a config dataclass or the plain dict it was saved as in a checkpoint."""
    return cls(**value) if isinstance(value, dict) else value


class SSLMethod(L.LightningModule):
    """Backbone + projector trained on V >= 2 augmented views of each image.

    Owns the training step (views -> embeddings -> ``compute_loss`` -> logging, with a clear error
    on a non-finite loss), the optimizer and its warm-up + cosine schedule, and checkpointable
    hyperparameters (saved as plain values, so checkpoints load with ``weights_only=True``).
    A method subclasses this and sets ``self.criterion`` (or overrides :meth:`compute_loss`); one
    with a momentum encoder calls :meth:`add_momentum_target`, and the base updates it every step;
    one with more heads (BYOL's predictor) registers them with :meth:`add_head`, so that
    ``trainable`` covers them. How the step runs (compile, channels-last, a CUDA graph) is
    :mod:`spectral_ssl.engine`'s.

    The step returns what :meth:`compute_loss` made, ``{"loss", **parts, "features"}``
    (``features``: the backbone features of the first embedded view, detached), which callbacks
    receive as the ``outputs`` of ``on_train_batch_end`` (the online linear probe trains on them).
    ``views_step``: the training step is exactly views -> :meth:`compute_loss` -> check -> log
    (what :class:`~spectral_ssl.engine.CUDAGraphStrategy` may capture); a subclass whose step does
    more (the supervised classifier reads labels) sets it False.

    ``projector_dims``: hidden widths then the embedding width, e.g. [2048, 2048, 2048];
    ``projector_bias`` / ``projector_batch_norm``: the hidden layers' bias and BatchNorm
    (:class:`~spectral_ssl.models.Projector`; solo-learn's heads: a bias; its SimCLR head: no BatchNorm).
    ``trainable``: ``all``, ``norm_only`` (only the backbone's normalization parameters train; all
    other weights stay at their seeded random initialization) or ``norm_and_head`` (those and the
    heads); see :func:`spectral_ssl.models.trainable.set_trainable`.
    """

    views_step = True

    def __init__(
        self,
        backbone: BackboneConfig = BackboneConfig(),
        projector_dims: Sequence[int] = (2048, 2048, 2048),
        optimizer: OptimizerConfig = OptimizerConfig(),
        trainable: Trainable = "all",
        projector_bias: bool = False,
        projector_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        backbone, optimizer = _config(BackboneConfig, backbone), _config(OptimizerConfig, optimizer)
        if len(projector_dims) < 1:
            raise ValueError("projector_dims needs at least the embedding width")
        self.save_hyperparameters()
        self.hparams.update(
            backbone=dataclasses.asdict(backbone),
            optimizer=dataclasses.asdict(optimizer),
            projector_dims=list(projector_dims),
        )
        self.optimizer_config = optimizer
        self.backbone = backbone.build()
        self.head_layout = {"bias": projector_bias, "batch_norm": projector_batch_norm}
        self.projector = self.head(self.backbone.feature_dim, projector_dims[:-1], projector_dims[-1])
        self.trainable, self.heads = trainable, [self.projector]
        self.target: MomentumTarget | None = None  # see add_momentum_target
        self.total_steps = 0  # optimizer steps of the whole run, planned at train start
        self.accumulated_micro_batches = 0  # since the last optimizer step
        self._gradients_to_restore: dict | None = None  # see on_save_checkpoint
        self._count_trainable()

    def _count_trainable(self) -> None:
        self.num_trainable, self.num_parameters = set_trainable(self.backbone, self.heads, self.trainable)

    def head(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> Projector:
        """An MLP head in this method's projector layout (bias, BatchNorm), e.g. BYOL's predictor."""
        return Projector(in_dim, hidden_dims, out_dim, **self.head_layout)

    def add_head(self, head: torch.nn.Module) -> torch.nn.Module:
        """Registers another trainable head (``trainable`` applies to it, and the count includes it)."""
        self.heads.append(head)
        self._count_trainable()
        return head

    def add_momentum_target(self, base_momentum: float, final_momentum: float = 1.0, lag: int = 0) -> None:
        """An EMA copy of backbone + projector, its momentum raised from ``base_momentum`` to
        ``final_momentum`` by a cosine over training (:func:`cosine_momentum`), updated after
        every optimizer step: after step k (1-based) with the m of step k - ``lag`` (0: the
        official INTL code's, which moves its key encoder with m_k before the forward of step k + 1;
        1: BYOL's and solo-learn's, which move the target after step k with tau_{k-1})."""
        self.target = MomentumTarget(self.backbone, self.projector)
        self.momentum_range, self.momentum_lag = (base_momentum, final_momentum), lag

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's optimizer step, then the per-step state: the momentum target moves once per
        optimizer step (not per micro-batch under gradient accumulation), before any callback's
        ``on_train_batch_end`` can checkpoint it."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.accumulated_micro_batches = 0
        if self.target is not None:
            self.target.update([self.backbone, self.projector], self.target_momentum(self.schedule_step + 1))

    @property
    def schedule_step(self) -> int:
        """The optimizer steps taken so far, counted in this run's layout: the learning-rate
        schedule's position (:class:`~spectral_ssl.optim.WarmupCosine`, re-mapped on a resume that
        changed the steps per epoch; Lightning's ``global_step`` still counts the old ones). The
        clock of every schedule; the step being taken is ``schedule_step + 1`` until the scheduler
        steps, after the optimizer."""
        return self.lr_schedulers().last_epoch

    def target_momentum(self, step: int) -> float:
        """The momentum target's m after optimizer step ``step`` (1-based) of the run's planned steps."""
        return cosine_momentum(step - self.momentum_lag, self.total_steps, *self.momentum_range)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.accumulated_micro_batches += 1  # back to 0 when this batch's gradients are stepped

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint carries the statistics of the data it was trained on (``data_statistics``:
        the views' mean and std, image size, classes: what the export tells timm and other users),
        beside Lightning's ``datamodule_hyper_parameters``. A checkpoint written between the
        micro-batches of an accumulated step (SLURM's requeue signal, a time-based checkpoint)
        carries the gradients summed so far, so that it resumes exactly: Lightning saves none."""
        data = self._trainer.datamodule if self._trainer is not None else None
        if data is not None and all(hasattr(data, key) for key in ("mean", "std", "image_size")):
            checkpoint["data_statistics"] = {
                "mean": [float(value) for value in data.mean],
                "std": [float(value) for value in data.std],
                "image_size": int(data.image_size),
                "num_classes": int(data.num_classes) if getattr(data, "num_classes", None) else None,
            }
        if self.accumulated_micro_batches:
            checkpoint["accumulated_gradients"] = {
                "micro_batches": self.accumulated_micro_batches,
                "gradients": {
                    name: p.grad.detach().clone() for name, p in self.named_parameters() if p.grad is not None
                },
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._gradients_to_restore = checkpoint.get("accumulated_gradients")  # applied at train start, on the device

    def _load_backbone_weights(self) -> None:
        """``backbone.weights``: a fresh run starts from them (the momentum target too); a resumed
        one from its checkpoint, which Lightning has restored before ``on_fit_start`` (its
        ``ckpt_path`` is set then), so the weights file need not exist any more."""
        weights = self.hparams["backbone"].get("weights")
        if weights and self.trainer.ckpt_path is None:
            backbone_weights(weights, self.backbone)
            if self.target is not None:
                self.target.network[0].load_state_dict(self.backbone.state_dict())
            rank_zero_info(f"backbone weights from {weights}")

    def on_fit_start(self) -> None:
        self._load_backbone_weights()
        rank_zero_info(
            f"trainable={self.trainable}: {self.num_trainable:,} of {self.num_parameters:,} parameters train"
        )
        if self.logger is not None:
            self.logger.log_metrics(
                {"params/trainable": self.num_trainable, "params/total": self.num_parameters}, step=0
            )

    def on_train_start(self) -> None:
        self._plan_schedule()
        if self._gradients_to_restore:
            parameters = dict(self.named_parameters())
            for name, gradient in self._gradients_to_restore["gradients"].items():
                parameters[name].grad = gradient.to(parameters[name].device)
            self.accumulated_micro_batches = self._gradients_to_restore["micro_batches"]
        self._gradients_to_restore = None

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features (what evaluation and export use)."""
        return self.backbone(images)

    def embed(self, views: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """(projector outputs of each view, the backbone features of the first view, detached);
        views may differ in resolution."""
        features = [self.backbone(v) for v in views]
        return [self.projector(f) for f in features], features[0].detach()

    def compute_loss(self, views: Sequence[Tensor]) -> dict[str, Tensor]:
        """The step's forward: ``{"loss": scalar, **parts to log, "features": ...}``; by default
        ``self.criterion`` (a loss module from :mod:`spectral_ssl.losses`, set by the method)
        applied to the embeddings of the views, and the features :meth:`embed` returned."""
        embeddings, features = self.embed(views)
        return {**self.criterion(embeddings), "features": features}

    @property
    def host_sync(self) -> str | None:
        """Why this method's loss waits for the host (its criterion's ``host_sync``), or None."""
        return getattr(getattr(self, "criterion", None), "host_sync", None)

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        outputs = self.compute_loss(batch[0])
        self.check_finite(outputs)
        self.log_outputs(outputs)
        return outputs

    def check_finite(self, outputs: dict[str, Tensor]) -> None:
        """Stops training with :meth:`nonfinite_error` when the loss is NaN or infinite."""
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            parts = {k: float(v.detach()) for k, v in outputs.items() if k != "features"}
            raise self.nonfinite_error(
                f"the loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); parts: {parts}"
            )

    def log_outputs(self, outputs: dict[str, Tensor], prog_bar: bool = True) -> None:
        """Logs the loss, its parts, the learning rate and the momentum target's m."""
        self.log("train/loss", outputs["loss"], prog_bar=prog_bar)
        self.log_dict({f"train/{name}": value for name, value in outputs.items() if name not in ("loss", "features")})
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        if self.target is not None:  # what the target moves with after this step (optimizer_step)
            self.log("train/momentum", self.target_momentum(self.schedule_step + 1))

    def nonfinite_error(self, what: str) -> FloatingPointError:
        return FloatingPointError(
            f"{type(self).__name__}: {what}. Nothing was saved from that step on; the last checkpoint is intact. "
            "Lower the learning rate, check the input data, or disable mixed precision, then run the same command "
            "to resume."
        )

    def configure_optimizers(self):
        config = self.optimizer_config
        scale = scaled_lr(1.0, self.trainer, config.batch_size)
        optimizer = build_optimizer(self, config, config.lr * scale)
        # planned at train start: estimated_stepping_batches here would build the training loader before a
        # checkpoint is restored, and Lightning would then never resume it mid-epoch (Lightning issue #20550)
        scheduler = WarmupCosine(
            optimizer,
            min_lr_ratio=config.min_lr_ratio,
            schedule=config.schedule,
            warmup_start_lr=config.warmup_start_lr * scale,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _plan_schedule(self) -> None:
        """Every schedule on one clock, optimizer steps in this run's layout (:attr:`schedule_step`),
        from the run's real budget: the end T from Lightning's ``estimated_stepping_batches``
        (max_epochs, max_steps, whichever ends the run first, limit_train_batches, gradient
        accumulation, devices and nodes; :func:`~spectral_ssl.optim.planned_steps`) and the
        warm-up ``warmup_epochs`` x the optimizer steps per epoch (a run shorter than that ends
        inside its warm-up, as it does when bounded by epochs). The momentum target's cosine runs
        over the same T. Called at train start (see configure_optimizers), so a resumed run is
        re-planned from its position, re-mapped when its steps per epoch changed."""
        scheduler, per_epoch = self.lr_schedulers(), steps_per_epoch(self.trainer)
        self.total_steps = planned_steps(self.trainer, scheduler.position_in(per_epoch))
        scheduler.plan(round(self.optimizer_config.warmup_epochs * per_epoch), self.total_steps, per_epoch)

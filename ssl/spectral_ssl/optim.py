"""Optimizers and learning-rate schedules, built from torch's and timm's own classes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .models.norms import is_norm


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD, LARS, Adam or AdamW (``name``), linear warm-up then cosine decay, stepped every iteration.

    ``lr`` is the base learning rate for a global batch of 256: the optimizer uses
    lr * (per-device batch x devices x nodes x gradient accumulation) / 256; ``batch_size`` is the
    per-device batch (the commands link it from ``data.batch_size``; None: the datamodule's). The cosine ends at
    ``min_lr_ratio`` x that (INTL: 0.001). ``exclude_bias_and_norm`` takes biases and every
    parameter of a normalization layer out of weight decay (and so out of LARS adaptation).
    """

    name: str = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.001
    batch_size: int | None = None


def global_batch_size(trainer, batch_size: int | None = None) -> int:
    """Images per optimizer step over all processes: the per-device ``batch_size`` (None: the
    trainer's datamodule's) x devices x nodes x gradient accumulation."""
    if batch_size is None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "batch_size"):
            raise ValueError(
                "the learning rate is scaled by the batch size: give the per-device batch_size (the commands "
                "link data.batch_size to it) or fit with a datamodule that has batch_size"
            )
        batch_size = datamodule.batch_size
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaled_lr(base_lr: float, trainer, batch_size: int | None = None) -> float:
    """The linear scaling rule (Goyal et al., 2017): ``base_lr`` x global batch / 256."""
    return base_lr * global_batch_size(trainer, batch_size) / 256


def planned_steps(trainer) -> tuple[int, int]:
    """(T, S): the optimizer steps of the whole run and of one epoch, per process.

    T is Lightning's ``estimated_stepping_batches``: the run ends at ``max_steps`` or after
    ``max_epochs`` epochs of ceil(batches / ``accumulate_grad_batches``) steps, whichever comes
    first (``limit_train_batches``, devices and nodes are in the batch count). S counts the
    last, partial accumulation of an epoch as a step, as Lightning does. Raises ValueError when
    nothing bounds the run (``max_epochs=-1`` and no ``max_steps``): no schedule has an end then.
    """
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(
            "the run has no end (trainer.max_epochs=-1 and no trainer.max_steps), so the learning-rate and momentum "
            "schedules cannot be planned: set --trainer.max_epochs or --trainer.max_steps"
        )
    steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
    return int(total), steps_per_epoch


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: decayed weights, and (when excluded) biases, normalization parameters and
    what a module lists in timm's ``no_weight_decay()`` (a ViT's position embedding and class
    token, as DINO's and solo-learn's ViT recipes exclude them) with weight_decay 0.
    Normalization layers are found by module type, not by tensor shape."""
    if not exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        listed = module.no_weight_decay() if callable(getattr(module, "no_weight_decay", None)) else set()
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            (no_decay if is_norm(module) or name == "bias" or name in listed else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s trainable parameters; SGD and Adam use torch's
    fused CUDA kernels when every parameter is on a GPU."""
    groups = parameter_groups(model, config.weight_decay, config.exclude_bias_and_norm)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, fused=fused)
    if config.name == "lars":
        from timm.optim import Lars

        # timm's LARS adapts only groups whose weight decay is non-zero (always_adapt=False).
        return Lars(groups, lr=lr, momentum=config.momentum)
    if config.name == "adam":  # W-MSE's optimizer; weight decay as L2 in the gradient, as in its code
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if config.name == "adamw":  # the ViT recipes' (DINO, solo-learn): decoupled weight decay
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise ValueError(f"unknown optimizer {config.name!r}; choose 'sgd', 'lars', 'adam' or 'adamw'")


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up then cosine decay, stepped every iteration, in closed form:

        lr_t = lr (t + 1) / W                                          for t < W
        lr_t = lr [r + (1 - r) (1 + cos(pi (t - W) / (T - W))) / 2]    for W <= t < T

    with W = ``warmup_steps``, T = ``total_steps``, r = ``min_lr_ratio`` (SimCLR/INTL's schedule).
    W and T can be given later, with :meth:`plan` (once the trainer knows its data).

    A checkpoint keeps only the position, not the plan: :meth:`state_dict` is the step t and the
    steps per epoch it was counted in. Loaded into a scheduler planned from a changed config, it
    continues at the same point of training (in epochs) on the new plan: another peak ``lr``,
    another T (``trainer.max_epochs``), another number of steps per epoch (devices, batch size).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        min_lr_ratio: float,
        warmup_steps: int | None = None,
        total_steps: int | None = None,
        steps_per_epoch: int = 1,
    ) -> None:
        self.min_lr_ratio, self.warmup_steps, self.total_steps = min_lr_ratio, 0, None
        self.steps_per_epoch, self._loaded = steps_per_epoch, None
        super().__init__(optimizer)
        if total_steps is not None:
            self.plan(warmup_steps or 0, total_steps, steps_per_epoch)

    def plan(self, warmup_steps: int, total_steps: int, steps_per_epoch: int) -> None:
        """Sets W, T and the steps per epoch, continues a loaded position on them, and sets the lr."""
        self.warmup_steps, self.total_steps, self.steps_per_epoch = warmup_steps, total_steps, steps_per_epoch
        if self._loaded is not None:
            step, counted_in = self._loaded
            self.last_epoch, self._loaded = round(step * steps_per_epoch / counted_in), None
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):  # a checkpoint's optimizer has its own
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # a CUDA graph reads this tensor
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def factor(self, step: int) -> float:
        """lr_t / lr (1 until planned)."""
        if self.total_steps is None:
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2

    def get_lr(self) -> list:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict:
        return {"step": self.last_epoch, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = (state_dict["step"], state_dict["steps_per_epoch"])
        if self.total_steps is not None:
            self.plan(self.warmup_steps, self.total_steps, self.steps_per_epoch)

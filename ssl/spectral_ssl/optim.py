"""Optimizers and learning-rate schedules, built from torch's and timm's own classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

Schedule = Literal["intl", "bolts"]
SCHEDULES = get_args(Schedule)


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD, LARS, Adam or AdamW (``name``), linear warm-up then cosine decay, stepped every
    optimizer step (:class:`WarmupCosine`, in the convention of ``schedule``: ``"intl"``, the
    official INTL code's, or ``"bolts"``, solo-learn's, which warms up from ``warmup_start_lr``).

    ``lr`` is the base learning rate for a global batch of 256: the optimizer uses
    lr * (per-device batch x devices x nodes x gradient accumulation) / 256 (``warmup_start_lr``
    is scaled alike); ``batch_size`` is the per-device batch (the commands link it from
    ``data.batch_size``; None: the datamodule's). The cosine ends at ``min_lr_ratio`` x that
    (INTL: 0.001). ``exclude_bias_and_norm`` takes every parameter with one dimension or none
    (biases, the affine parameters of every norm, LayerScale gains, SkipInit gains) and what a
    module lists in timm's ``no_weight_decay()`` (a ViT's position embedding and class token) out of
    weight decay and LARS adaptation (DINO's and timm's rule; the official INTL ImageNet code's
    ``param.ndim == 1``). LARS (timm's ``Lars``) adapts every other parameter, whatever the weight
    decay (as solo-learn's, BYOL's and Barlow Twins' LARS do), with trust coefficient
    ``trust_coeff`` (solo-learn's ``eta``) and, with ``trust_clip``, the ratio clipped at lr (LARC;
    solo-learn's ``clip_lr``).
    """

    name: str = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.001
    batch_size: int | None = None
    schedule: Schedule = "intl"
    warmup_start_lr: float = 0.0
    trust_coeff: float = 0.001
    trust_clip: bool = False


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


def steps_per_epoch(trainer) -> int:
    """S, the optimizer steps of one epoch per process: ceil(batches / ``accumulate_grad_batches``)
    (the last, partial accumulation of an epoch is a step, as Lightning counts it;
    ``limit_train_batches``, devices and nodes are in the batch count)."""
    return max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))


def planned_steps(trainer, position: int | None = None) -> int:
    """T, the position (in optimizer steps of this run's layout, S per epoch) at which the run ends.

    Lightning's ``estimated_stepping_batches``: ``max_epochs`` epochs of S steps or ``max_steps``,
    whichever comes first. A resumed run whose layout changed (batch size, devices, accumulation)
    continues at ``position`` (its schedule's position re-mapped to the new S) while Lightning's
    ``global_step`` still counts the old steps; ``max_steps`` ends it after ``max_steps -
    global_step`` more, so a run bounded by steps ends at ``position + max_steps - global_step``.
    Raises ValueError when nothing bounds the run (``max_epochs=-1`` and no ``max_steps``): no
    schedule has an end then.
    """
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError(
            "the run has no end (trainer.max_epochs=-1 and no trainer.max_steps), so the learning-rate and momentum "
            "schedules cannot be planned: set --trainer.max_epochs or --trainer.max_steps"
        )
    if position is not None and trainer.max_steps != -1 and trainer.max_steps <= total:  # bounded by steps
        return position + trainer.max_steps - trainer.global_step
    return int(total)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The parameters that modules inside ``model`` list in timm's ``no_weight_decay()`` (names
    relative to each module), as names relative to ``model``."""
    names = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
    return names


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """The trainable parameters of ``model`` as the optimizer's groups, by the shape rule (DINO's,
    timm's ``param_groups_weight_decay``, the official INTL code's): ``"decay"`` with
    ``weight_decay``, and, when ``exclude_bias_and_norm``, ``"no_decay"`` with 0 for every
    parameter of at most one dimension and those in :func:`no_weight_decay_names`. Both groups are
    kept whatever ``weight_decay`` is (timm's helper merges them at 0), as LARS adapts the first only."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return [{"name": "decay", "params": [p for _, p in trainable], "weight_decay": weight_decay}]
    listed = no_weight_decay_names(model)
    spared = {name for name, p in trainable if p.ndim <= 1 or name in listed}
    return [
        {"name": "decay", "params": [p for name, p in trainable if name not in spared], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for name, p in trainable if name in spared], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s trainable parameters; SGD and Adam use torch's
    fused CUDA kernels when every parameter is on a GPU."""
    groups = parameter_groups(model, config.weight_decay, config.exclude_bias_and_norm)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, fused=fused)
    if config.name == "lars":
        from timm.optim import Lars

        # timm's LARS adapts only groups with non-zero weight decay unless told to always adapt: adapt
        # every group but the excluded one, whose weight decay is 0 by exclusion, not by value
        for group in groups:
            group["always_adapt"] = group["name"] != "no_decay"
        return Lars(
            groups, lr=lr, momentum=config.momentum, trust_coeff=config.trust_coeff, trust_clip=config.trust_clip
        )
    if config.name == "adam":  # W-MSE's optimizer; weight decay as L2 in the gradient, as in its code
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if config.name == "adamw":  # the ViT recipes' (DINO, solo-learn): decoupled weight decay
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise ValueError(f"unknown optimizer {config.name!r}; choose 'sgd', 'lars', 'adam' or 'adamw'")


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up then cosine decay, stepped every optimizer step, in closed form, as one of
    two sources writes it (``schedule``); W = ``warmup_steps``, T = ``total_steps``, r =
    ``min_lr_ratio``, t = 0, 1, ... the step about to be taken:

    ``"intl"`` (the official INTL code's ``adjust_learning_rate``, winci-ai/INTL main.py):

        lr_t = lr (t + 1) / W                                                for t < W
        lr_t = lr [r + (1 - r) (1 + cos(pi (t + 1 - W) / (T - W))) / 2]      for W <= t < T

    so the last step (t = T - 1) runs at exactly r lr;

    ``"bolts"`` (Lightning Bolts' ``LinearWarmupCosineAnnealingLR``, solo-learn's
    ``warmup_cosine``), from ``warmup_start_lr`` = s at the first step to the peak at step W:

        lr_t = s + t (lr - s) / (W - 1)                                      for t < W
        lr_t = lr [r + (1 - r) (1 + cos(pi (t - W) / (T - W))) / 2]          for W <= t < T.

    W and T can be given later, with :meth:`plan` (once the trainer knows its data).

    A checkpoint keeps only the position, not the plan: :meth:`state_dict` is the step t and the
    steps per epoch it was counted in. Loaded into a scheduler planned from a changed config, it
    continues at the same point of training (in epochs) on the new plan (:meth:`position_in`):
    another peak ``lr``, another T (``trainer.max_epochs``), another number of steps per epoch
    (devices, batch size, accumulation). :attr:`last_epoch` is that position, t, in the steps of
    the run's own layout: the clock of every schedule of the run (the momentum target's too).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        min_lr_ratio: float,
        schedule: Schedule = "intl",
        warmup_start_lr: float = 0.0,
        warmup_steps: int | None = None,
        total_steps: int | None = None,
        steps_per_epoch: int = 1,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        self.min_lr_ratio, self.schedule, self.warmup_start_lr = min_lr_ratio, schedule, warmup_start_lr
        self.warmup_steps, self.total_steps = 0, None
        self.steps_per_epoch, self._loaded = steps_per_epoch, None
        super().__init__(optimizer)
        if total_steps is not None:
            self.plan(warmup_steps or 0, total_steps, steps_per_epoch)

    def position_in(self, steps_per_epoch: int) -> int:
        """The step t training continues at, counted in epochs of ``steps_per_epoch`` optimizer
        steps: a loaded position re-mapped to them (the same fraction of an epoch count), else the
        current one."""
        if self._loaded is None:
            return self.last_epoch
        step, counted_in = self._loaded
        return round(step * steps_per_epoch / counted_in)

    def plan(self, warmup_steps: int, total_steps: int, steps_per_epoch: int) -> None:
        """Sets W, T and the steps per epoch, continues a loaded position on them, and sets the lr."""
        self.last_epoch, self._loaded = self.position_in(steps_per_epoch), None
        self.warmup_steps, self.total_steps, self.steps_per_epoch = warmup_steps, total_steps, steps_per_epoch
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):  # a checkpoint's optimizer has its own
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # a CUDA graph reads this tensor
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def lr_at(self, step: int, peak: float) -> float:
        """lr_t for a group whose peak is ``peak`` (``peak`` until planned)."""
        warmup, total = self.warmup_steps, self.total_steps
        if total is None:
            return peak
        bolts = self.schedule == "bolts"
        if step < warmup:
            if bolts:
                start = self.warmup_start_lr
                return start + step * (peak - start) / (warmup - 1) if warmup > 1 else start
            return peak * (step + 1) / warmup
        done = step - warmup + (0 if bolts else 1)
        progress = min(done / max(total - warmup, 1), 1.0)
        return peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2)

    def get_lr(self) -> list:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict:
        return {"step": self.last_epoch, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = (state_dict["step"], state_dict["steps_per_epoch"])
        if self.total_steps is not None:
            self.plan(self.warmup_steps, self.total_steps, self.steps_per_epoch)

"""Linear evaluation: fast, on cached features (:func:`linear_probe`, the quick number), and the
ImageNet protocol (:class:`LinearClassifier`, the reportable one), which also fine-tunes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..checkpoints import backbone_weights, load_encoder
from ..distributed import all_reduce, world_size
from ..models import BackboneConfig
from ..optim import scaled_lr

ProbeSchedule = Literal["cosine", "exponential"]
ClassifierSchedule = Literal["step", "cosine"]
ProbeInit = Literal["normal", "default"]


def linear_probe(
    train_features,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 5e-6,
    batch_size: int = 4096,
    seed: int = 0,
    sharded: bool = False,
    block_rows: int = 16384,
    standardize: bool = True,
    schedule: ProbeSchedule = "cosine",
    final_lr_ratio: float = 1e-4,
    init: ProbeInit = "normal",
) -> float:
    """Top-1 (in [0, 1]) of a linear classifier trained on frozen, cached features.

    By default, features are standardized with the training set's mean and std and the
    classifier (weights N(0, 0.01), bias 0) is trained with Adam and weight decay, its lr decayed
    by a cosine to ``final_lr_ratio`` x lr over the steps, for ``epochs`` passes in shuffled
    mini-batches of ``batch_size``. The official INTL CIFAR evaluation (``eval_sgd`` in
    winci-ai/INTL cifar/eval/evaluate.py) is ``standardize=False`` (raw features),
    ``schedule="exponential"`` (the lr x gamma after every epoch, gamma = ``final_lr_ratio`` **
    (1 / epochs): 1e-2 to 1e-6 over 500 epochs), ``init="default"`` (``nn.Linear``'s own
    initialisation), batch 1000 (the ``linear_fast/intl_cifar*`` configs). Deterministic for a
    given ``seed`` (the initialisation and the order drawn from it).

    Training features held in a :class:`~spectral_ssl.evaluation.features.FeatureFile`, or
    ``sharded`` under DDP (each rank passes its share of the training features, and the same
    test features), go through :func:`_linear_probe_streamed` instead: blocks of ``block_rows``
    rows read in a shuffled order, shuffled within, and gradients summed over the ranks.
    """
    if sharded and world_size() > 1 or not isinstance(train_features, Tensor):
        return _linear_probe_streamed(
            train_features,
            train_labels,
            test_features,
            test_labels,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
            sharded=sharded and world_size() > 1,
            block_rows=block_rows,
            standardize=standardize,
            schedule=schedule,
            final_lr_ratio=final_lr_ratio,
            init=init,
        )
    generator = torch.Generator().manual_seed(seed)
    if standardize:
        mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    else:
        mean, std = torch.zeros((), device=train_features.device), torch.ones((), device=train_features.device)
    x_train, x_test = (train_features.float() - mean) / std, (test_features.float() - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    steps_per_epoch = -(-len(x_train) // batch_size)
    classifier, optimizer, steps = _classifier(
        x_train.shape[1], num_classes, x_train.device, generator, lr, weight_decay, epochs, steps_per_epoch,
        schedule, final_lr_ratio, init,
    )  # fmt: skip
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).to(x_train.device).split(batch_size):
            loss = F.cross_entropy(classifier(x_train[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.step()
    with torch.no_grad():
        return (classifier(x_test).argmax(1) == test_labels).float().mean().item()


def _classifier(
    dim: int,
    num_classes: int,
    device,
    generator: torch.Generator,
    lr: float,
    weight_decay: float,
    epochs: int,
    steps_per_epoch: int,
    schedule: ProbeSchedule,
    final_lr_ratio: float,
    init: ProbeInit,
):
    """The probe's linear classifier on ``device`` (``init``: weights N(0, 0.01), bias 0; or
    ``nn.Linear``'s own, Kaiming-uniform with a = sqrt(5) and a uniform bias; both drawn from
    ``generator``), its Adam optimizer and its per-step schedule (a cosine to ``final_lr_ratio`` x
    lr over the steps, or the lr x gamma each epoch)."""
    classifier = torch.nn.Linear(dim, num_classes)
    with torch.no_grad():
        if init == "normal":
            classifier.weight.normal_(0, 0.01, generator=generator)
            classifier.bias.zero_()
        else:
            torch.nn.init.kaiming_uniform_(classifier.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(dim)
            classifier.bias.uniform_(-bound, bound, generator=generator)
    classifier.to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        steps = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, epochs * steps_per_epoch, eta_min=lr * final_lr_ratio
        )
    else:
        gamma = final_lr_ratio ** (1 / epochs)
        steps = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** (step // steps_per_epoch))
    return classifier, optimizer, steps


@torch.no_grad()
def _mean_std(features, device, block_rows: int, sharded: bool) -> tuple[Tensor, Tensor]:
    """Column mean and (unbiased) std of all training features, in float64 sums over blocks."""
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=device)
    squares, count = torch.zeros_like(total), torch.zeros((), dtype=torch.float64, device=device)
    step = min(block_rows, 4096)  # float64 copies of 4096 rows at a time
    for start in range(0, len(features), step):
        block = features[start : start + step].to(device, torch.float64)
        total, squares, count = total + block.sum(0), squares + block.square().sum(0), count + len(block)
    if sharded:
        total, squares, count = (all_reduce(t) for t in (total, squares, count))
    mean = total / count
    variance = (squares - count * mean.square()) / (count - 1).clamp(min=1)
    return mean.float(), variance.clamp(min=0).sqrt().float().clamp_min(1e-6)


def _linear_probe_streamed(
    train_features,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    sharded: bool,
    block_rows: int,
    standardize: bool,
    schedule: ProbeSchedule,
    final_lr_ratio: float,
    init: ProbeInit,
) -> float:
    """:func:`linear_probe` over features that one process cannot or should not hold whole. Host
    memory holds one block (``block_rows`` x D float32: 128 MB at D = 2048). Each rank takes
    mini-batches of ``batch_size`` / ranks from its share; the loss of a step is the mean over the
    whole step's images on all ranks, so the summed gradient equals that of one process taking the
    same images. The classifier, its initialisation and the steps are the same on every rank."""
    device = test_features.device
    world = world_size() if sharded else 1
    local_batch = max(batch_size // world, 1)
    generator = torch.Generator().manual_seed(seed)
    if standardize:
        mean, std = _mean_std(train_features, device, block_rows, sharded)
    else:
        mean, std = torch.zeros((), device=device), torch.ones((), device=device)
    classes = torch.tensor([int(train_labels.max()) + 1 if len(train_labels) else 0, int(test_labels.max()) + 1])
    if sharded:
        classes = all_reduce(classes, dist.ReduceOp.MAX)
    blocks = [
        (start, min(start + block_rows, len(train_features))) for start in range(0, len(train_features), block_rows)
    ]
    steps = torch.tensor(sum(-(-(end - start) // local_batch) for start, end in blocks))
    steps_per_epoch = int(all_reduce(steps, dist.ReduceOp.MAX)) if sharded else int(steps)
    classifier, optimizer, steps = _classifier(
        train_features.shape[1], int(classes.max()), device, generator, lr, weight_decay, epochs, steps_per_epoch,
        schedule, final_lr_ratio, init,
    )  # fmt: skip
    labels = train_labels.to(device)
    for _ in range(epochs):
        batches = []
        for b in torch.randperm(len(blocks), generator=generator).tolist():
            start, end = blocks[b]
            order = torch.randperm(end - start, generator=generator) + start
            batches += [(start, end, index) for index in order.split(local_batch)]
        block_start, block = None, None
        for step in range(steps_per_epoch):
            if step < len(batches):
                start, end, index = batches[step]
                if start != block_start:  # the next block: read it once
                    block_start = start
                    block = (train_features[start:end].to(device, torch.float32) - mean) / std
                x, y = block[(index - start).to(device)], labels[index.to(device)]
            else:  # this rank's share ran out before another's: it adds nothing to the step
                x, y = torch.zeros(0, classifier.in_features, device=device), labels[:0]
            count = torch.tensor(float(len(y)), device=device)
            if sharded:
                count = all_reduce(count)
            loss = F.cross_entropy(classifier(x), y, reduction="sum") / count.clamp(min=1)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if sharded:
                for param in classifier.parameters():
                    param.grad.copy_(all_reduce(param.grad))
            optimizer.step()
            steps.step()
    with torch.no_grad():
        x_test = (test_features.float() - mean) / std
        return (classifier(x_test).argmax(1) == test_labels.to(device)).float().mean().item()


class LinearClassifier(L.LightningModule):
    """A linear classifier on a pretrained backbone: linear evaluation, the ImageNet protocol
    (``backbone_lr=None``, the default), or fine-tuning (``backbone_lr``: a base lr).

    Linear evaluation: the backbone is frozen, always in eval mode (its BatchNorm statistics never
    change; no gradient reaches it). Fine-tuning: backbone and classifier train together, the
    backbone in train mode (BatchNorm statistics updated, as the official INTL / Barlow Twins
    ``evaluate.py --weights finetune`` does), with its own lr. The classifier (weights N(0, 0.01),
    bias 0) and the backbone are trained with SGD (momentum 0.9, no weight decay by default) on
    RandomResizedCrop + flip views, each lr scaled by global batch / 256; ``schedule``: ``step``
    divides both by 10 at each of ``milestones`` (epochs), ``cosine`` multiplies them by
    0.5 (1 + cos(pi e / E)) at epoch e of E (the official ``--schedule cos``). Top-1 and top-5
    are torchmetrics' counts over the whole validation set and every process.

    ``checkpoint``: a pretraining checkpoint (``.ckpt``) or an exported backbone
    (``backbone.safetensors`` / ``backbone.pth``); the ``linear`` and ``finetune`` commands also
    take it as their positional argument. ``backbone``: the architecture of a weights file that
    names none, given as ``backbone.weights`` instead of a checkpoint (a torchvision or timm
    state_dict: ``--model.backbone.name=resnet50 --model.backbone.weights=resnet50.pth``); unread
    when there is a checkpoint. Neither: a ValueError. ``num_classes``: taken from the datamodule
    when left out. ``batch_size``: per device, for the lr scaling (the commands link
    ``data.batch_size``; None: the datamodule's).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        num_classes: int | None = None,
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: Sequence[int] = (60, 80),
        batch_size: int | None = None,
        backbone_lr: float | None = None,
        schedule: ClassifierSchedule = "step",
        backbone: BackboneConfig = BackboneConfig(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.hparams.backbone = dataclasses.asdict(backbone)
        if not (checkpoint or backbone.weights):
            raise ValueError(
                "LinearClassifier needs the checkpoint to evaluate (checkpoint=PATH), or a weights file and "
                "its architecture (backbone.weights=PATH, backbone.name=...)"
            )
        with torch.random.fork_rng(devices=[]):  # the classifier's draws never depend on how the backbone is built
            if checkpoint:
                self.backbone, _ = load_encoder(checkpoint)
            else:
                self.backbone = backbone.build()
                backbone_weights(backbone.weights, self.backbone)
        self.backbone.requires_grad_(self.finetunes)
        self.backbone.train(self.finetunes)
        self.classifier: nn.Linear | None = None
        if num_classes:
            self._build_classifier(num_classes)

    @property
    def finetunes(self) -> bool:
        """Whether the backbone trains too (``backbone_lr`` given) or is frozen."""
        return self.hparams.backbone_lr is not None

    def _build_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.backbone.feature_dim, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.top1 = MulticlassAccuracy(num_classes, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def setup(self, stage: str) -> None:
        if self.classifier is None:  # Lightning has set the datamodule up (its setup runs first)
            datamodule = self.trainer.datamodule
            self._build_classifier(datamodule.num_classes)
            self.hparams.num_classes = datamodule.num_classes

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetunes:
            self.backbone.eval()  # frozen: never update BatchNorm statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.finetunes and torch.is_grad_enabled()):
            features = self.backbone(images)
        return self.classifier(features.float())

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels = batch[:2]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log("linear/train_loss", loss, prog_bar=True)
        self.log("linear/train_top1", (logits.argmax(1) == labels).float().mean())
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch[:2]
        logits = self(images)
        self.top1(logits, labels)
        self.top5(logits, labels)
        self.log("linear/top1", self.top1, prog_bar=True)
        self.log("linear/top5", self.top5)

    def configure_optimizers(self):
        hparams = self.hparams

        def lr(base: float) -> float:
            return scaled_lr(base, self.trainer, hparams.get("batch_size"))

        groups = [{"params": list(self.classifier.parameters()), "lr": lr(hparams.lr)}]
        if self.finetunes:
            groups.append({"params": list(self.backbone.parameters()), "lr": lr(hparams.backbone_lr)})
        optimizer = torch.optim.SGD(
            groups, lr=groups[0]["lr"], momentum=hparams.momentum, weight_decay=hparams.weight_decay
        )
        if hparams.get("schedule", "step") == "cosine":
            epochs = self.trainer.max_epochs
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs))
            )
        else:
            schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hparams.milestones), gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def state_dict(self, *args, **kwargs):  # a frozen backbone is the input file's: save the classifier alone
        state = super().state_dict(*args, **kwargs)
        return state if self.finetunes else {k: v for k, v in state.items() if not k.startswith("backbone.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        if not self.finetunes:
            state_dict = {**{f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

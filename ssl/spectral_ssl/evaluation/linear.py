"""Linear evaluation: fast, on cached features (:func:`linear_probe`, the quick number), and the
ImageNet protocol (:class:`LinearClassifier`, the reportable one)."""

from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, *,
                 epochs: int = 100, lr: float = 1e-2, weight_decay: float = 5e-6, batch_size: int = 4096,
                 seed: int = 0) -> float:
    """Top-1 (in [0, 1]) of a linear classifier trained on frozen, cached features.

    Features are standardized with the training set's mean and std; the classifier is trained
    with Adam (lr decayed by a cosine to 1e-4 x lr) and weight decay, the recipe of INTL's CIFAR
    evaluation on cached features, for ``epochs`` passes in shuffled mini-batches of
    ``batch_size``. Deterministic for a given ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features.float() - mean) / std, (test_features.float() - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = torch.nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        classifier.weight.normal_(0, 0.01, generator=generator)
        classifier.bias.zero_()
    classifier.to(x_train.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch, eta_min=lr * 1e-4)
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).to(x_train.device).split(batch_size):
            loss = F.cross_entropy(classifier(x_train[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return (classifier(x_test).argmax(1) == test_labels).float().mean().item()


class LinearClassifier(L.LightningModule):
    """Linear evaluation, the ImageNet protocol: a frozen backbone (always in eval mode, so its
    BatchNorm statistics never change; no gradient reaches it) and a linear classifier
    (weights N(0, 0.01), bias 0) trained with SGD (momentum 0.9, no weight decay by default) on
    RandomResizedCrop + flip views, lr scaled by global batch / 256 and divided by 10 at each of
    ``milestones`` (epochs); top-1 and top-5 on the clean validation images.

    ``checkpoint``: a pretraining checkpoint (``.ckpt``) or an exported backbone
    (``backbone.safetensors`` / ``backbone.pth``). ``num_classes``: taken from the datamodule
    when left out.
    """

    def __init__(self, checkpoint: str, num_classes: int | None = None, lr: float = 0.2, momentum: float = 0.9,
                 weight_decay: float = 0.0, milestones: Sequence[int] = (60, 80)) -> None:
        super().__init__()
        from ..export import load_encoder

        self.save_hyperparameters()
        self.backbone, _ = load_encoder(checkpoint)
        self.backbone.requires_grad_(False).eval()
        self.classifier: nn.Linear | None = None
        if num_classes:
            self._build_classifier(num_classes)

    def _build_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def setup(self, stage: str) -> None:
        if self.classifier is None:
            datamodule = self.trainer.datamodule
            datamodule.setup(stage)
            self._build_classifier(datamodule.num_classes)
            self.hparams.num_classes = datamodule.num_classes

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: never update BatchNorm statistics
        return self

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
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
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        self.log("linear/top1", (top5[:, 0] == labels).float().mean(), prog_bar=True, sync_dist=True)
        self.log("linear/top5", (top5 == labels[:, None]).any(1).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        batch = self.trainer.datamodule.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        optimizer = torch.optim.SGD(self.classifier.parameters(), lr=self.hparams.lr * batch / 256,
                                    momentum=self.hparams.momentum, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(self.hparams.milestones), gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def state_dict(self, *args, **kwargs):  # the frozen backbone is the input file's: save the classifier alone
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("backbone.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        return super().load_state_dict({**{f"backbone.{k}": v for k, v in self.backbone.state_dict().items()},
                                        **state_dict}, strict=strict, **kwargs)

"""The supervised reference: the same backbone trained with labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from ..models import BackboneConfig
from ..models.trainable import Trainable
from ..optim import OptimizerConfig
from .base import SSLMethod


class SupervisedClassifier(SSLMethod):
    """Backbone + linear classifier trained with cross-entropy on one augmented view per image.

    The classifier is the base class's projector reduced to one Linear layer (``num_classes``
    outputs), so optimizer, schedule, checkpointing and ``trainable`` (e.g. ``norm_only``: train
    the norm layers alone, ``norm_and_head``: and the classifier) work exactly as in pretraining.
    ``validation_step`` reports top-1 on whatever loader it is given (the CLI gives the held-out split).
    """

    views_step = False  # its step reads the labels

    def __init__(
        self,
        num_classes: int = 10,
        backbone: BackboneConfig = BackboneConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        trainable: Trainable = "all",
    ) -> None:
        super().__init__(backbone=backbone, projector_dims=[num_classes], optimizer=optimizer, trainable=trainable)
        self.val_top1 = MulticlassAccuracy(num_classes, average="micro")  # counts over the epoch and the processes

    def on_fit_start(self) -> None:
        classes = getattr(self.trainer.datamodule, "num_classes", None)
        if classes is not None and classes > self.projector.out_dim:
            raise ValueError(
                f"the dataset has {classes} classes but model.num_classes={self.projector.out_dim}: "
                f"set --model.num_classes={classes}"
            )
        super().on_fit_start()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        views, labels = batch
        images = views[0] if isinstance(views, (list, tuple)) else views
        logits = self.projector(self.backbone(images))
        self.log("train/top1", (logits.argmax(1) == labels).float().mean())
        outputs = {"loss": F.cross_entropy(logits, labels)}
        self.check_finite(outputs)
        self.log_outputs(outputs)
        return outputs

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch[:2]
        logits = self.projector(self.backbone(images))
        self.val_top1(logits, labels)
        self.log("val/top1", self.val_top1, prog_bar=True)

"""Fast linear evaluation on cached features (the quick number, not the ImageNet protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch, eta_min=lr * 1e-4)
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).split(batch_size):
            loss = F.cross_entropy(classifier(x_train[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return (classifier(x_test).argmax(1) == test_labels).float().mean().item()

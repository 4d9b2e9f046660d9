"""k-nearest-neighbour classification of embeddings (no training involved)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, *, k: int = 20,
                temperature: float | None = 0.07, num_classes: int | None = None,
                chunk_size: int = 4096) -> Tensor:
    """Class predictions for ``queries`` by cosine-similarity kNN against ``bank``.

    Features are L2-normalised; the k most similar bank rows vote for their labels with weight
    exp(sim / temperature) (the InstDisc / DINO protocol), or 1 each when ``temperature`` is None
    (plain majority vote; ties go to the smallest label). Queries are processed ``chunk_size`` at a
    time so that the similarity matrix never exceeds chunk_size x len(bank).
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    num_classes = num_classes or int(bank_labels.max()) + 1
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float().to(bank.device), dim=1)
    bank_labels = bank_labels.to(bank.device)
    predictions = []
    for chunk in queries.split(chunk_size):
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        weights = torch.ones_like(similarity) if temperature is None else (similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, **kwargs) -> float:
    """Top-1 accuracy (in [0, 1]) of :func:`knn_predict`; keyword arguments are passed on."""
    predictions = knn_predict(bank, bank_labels, queries, **kwargs)
    return (predictions.cpu() == query_labels.cpu()).float().mean().item()

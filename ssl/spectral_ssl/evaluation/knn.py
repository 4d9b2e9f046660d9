"""k-nearest-neighbour classification of embeddings (no training involved).

Two protocols, whose numbers are not comparable with each other:

- weighted kNN (InstDisc / DINO): cosine similarity, the k nearest vote with weight
  exp(sim / T); k = 20 or 200, T = 0.07 — ``knn_predict(..., k=20, temperature=0.07)``;
- the official INTL / W-MSE protocol: 5-NN by L2 distance, unweighted majority vote —
  ``knn_predict(..., k=5, temperature=None, metric="l2")``.

Features are L2-normalized first (``normalize=True``), as the bank of both protocols is.
Search runs with faiss when it is installed (a GPU index when faiss has GPU support and CUDA is
present; exact flat indexes either way) or in chunked torch on the bank's device, so that
ImageNet-size banks (1.28 M x 2048) never need a full similarity matrix.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Metric = Literal["cosine", "l2"]
Backend = Literal["auto", "faiss", "torch"]
PROTOCOLS = {  # name: keyword arguments of knn_predict
    "weighted k=20": dict(k=20, temperature=0.07, metric="cosine"),
    "weighted k=200": dict(k=200, temperature=0.07, metric="cosine"),
    "5-NN L2 (INTL)": dict(k=5, temperature=None, metric="l2"),
}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _search_faiss(bank: Tensor, queries: Tensor, k: int, metric: Metric, chunk_size: int) -> tuple[Tensor, Tensor]:
    import faiss

    bank_np = bank.float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(bank.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(bank.shape[1])
    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(bank_np)
    scores, indices = [], []
    for chunk in queries.float().cpu().split(chunk_size):
        s, i = index.search(chunk.contiguous().numpy(), k)
        scores.append(torch.from_numpy(s))
        indices.append(torch.from_numpy(i))
    scores, indices = torch.cat(scores), torch.cat(indices)
    return (scores if metric == "cosine" else -scores), indices  # higher is nearer


def _search_torch(bank: Tensor, queries: Tensor, k: int, metric: Metric, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Exact top-k, chunked over queries and over the bank (running top-k merge)."""
    bank, scores, indices = bank.float(), [], []
    bank_sq = bank.square().sum(1) if metric == "l2" else None
    for chunk in queries.float().to(bank.device).split(chunk_size):
        best_s = torch.full((len(chunk), 0), float("-inf"), device=bank.device)
        best_i = torch.zeros((len(chunk), 0), dtype=torch.long, device=bank.device)
        for start in range(0, len(bank), chunk_size):
            part = bank[start:start + chunk_size]
            s = chunk @ part.T
            if metric == "l2":  # -||q - b||^2 up to the query's own norm (constant per row)
                s = 2 * s - bank_sq[start:start + chunk_size]
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, torch.arange(start, start + len(part),
                                                                               device=bank.device).expand(len(chunk), -1)], 1)
            best_s, top = s.topk(min(k, s.shape[1]), dim=1)
            best_i = i.gather(1, top)
        scores.append(best_s)
        indices.append(best_i)
    return torch.cat(scores), torch.cat(indices)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, *, k: int = 20,
                temperature: float | None = 0.07, metric: Metric = "cosine", normalize: bool = True,
                num_classes: int | None = None, backend: Backend = "auto", chunk_size: int = 4096) -> Tensor:
    """Class predictions for ``queries`` by kNN against ``bank`` (see the module docstring).

    With ``temperature`` the k nearest vote with weight exp(cosine similarity / T) (the weight
    needs the cosine, so it requires ``metric="cosine"``); with None each votes 1 (majority;
    ties go to the smallest label). ``backend``: "faiss", "torch" or "auto" (faiss if installed).
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    if temperature is not None and metric != "cosine":
        raise ValueError("similarity-weighted votes need metric='cosine'; use temperature=None for the L2 protocol")
    k = min(k, bank.shape[0])
    num_classes = num_classes or int(bank_labels.max()) + 1
    if normalize:
        bank, queries = F.normalize(bank.float(), dim=1), F.normalize(queries.float(), dim=1)
    use_faiss = backend == "faiss" or (backend == "auto" and faiss_available())
    search = _search_faiss if use_faiss else _search_torch
    scores, index = search(bank, queries, k, metric, chunk_size)
    device = scores.device
    weights = torch.ones_like(scores) if temperature is None else (scores / temperature).exp()
    votes = torch.zeros(len(scores), num_classes, device=device, dtype=weights.dtype)
    votes.scatter_add_(1, bank_labels.to(device)[index], weights)
    return votes.argmax(dim=1).cpu()


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, **kwargs) -> float:
    """Top-1 accuracy (in [0, 1]) of :func:`knn_predict`; keyword arguments are passed on."""
    predictions = knn_predict(bank, bank_labels, queries, **kwargs)
    return (predictions == query_labels.cpu()).float().mean().item()

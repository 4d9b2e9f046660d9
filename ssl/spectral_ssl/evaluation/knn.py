"""k-nearest-neighbour classification of embeddings (no training involved).

Two protocols, whose numbers are not comparable with each other:

- weighted kNN (InstDisc / DINO): cosine similarity, the k nearest vote with weight
  exp(sim / T); k = 20 or 200, T = 0.07 — ``knn_predict(..., k=20, temperature=0.07)``;
- the official INTL / W-MSE protocol (``eval_knn`` in their ``cifar/eval/evaluate.py``): 5-NN by
  Euclidean distance between the *raw* backbone features (``torch.cdist``, no normalisation),
  unweighted majority vote, ties to the smallest label —
  ``knn_predict(..., k=5, temperature=None, metric="l2", normalize=False)``.

``normalize=True`` (the default, right for the weighted protocol) L2-normalises bank and queries
first; with it the L2 and cosine orders coincide. ``PROTOCOLS`` holds both, exactly.

Search is exact: the k nearest are the k best scores, ties broken by the lower bank index, so
the answer does not depend on how the bank is chunked or sharded. It runs in chunked torch on
the queries' device (the training GPU in the monitors: chunked matmul + top-k, no faiss needed;
the bank may live on another device or in a :class:`~spectral_ssl.evaluation.features.FeatureFile`
and is read a chunk at a time), or with faiss (exact flat indexes; a GPU index when faiss has
GPU support) for a bank held in host memory, when asked for (``backend="faiss"``: it copies the
bank twice, normalized and into its index). ``backend="auto"`` is torch. faiss is an optional
extra (``[faiss-cpu]`` or ``[faiss-gpu]``); only exact flat indexes are used: no approximate
index (IVF-PQ) is offered, as the sharded torch search keeps every bank up to ImageNet size
exact within memory (larger banks: a :class:`~spectral_ssl.evaluation.features.FeatureFile`).

Under DDP, ``sharded=True`` lets each rank hold only its contiguous share of the bank: every
rank searches its share for all queries, and the per-rank top-k (scores, bank indices, labels)
are gathered and merged by the same rule, which gives exactly the single-process answer
(scores aside, a bank of 1.28 M x 2048 float32 is 10.5 GB; eight ranks hold 1.3 GB each).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..distributed import backend_device, world_size

Metric = Literal["cosine", "l2"]
Backend = Literal["auto", "faiss", "torch"]
PROTOCOLS = {  # name: keyword arguments of knn_predict
    "weighted k=20": dict(k=20, temperature=0.07, metric="cosine"),
    "weighted k=200": dict(k=200, temperature=0.07, metric="cosine"),
    "5-NN L2 (INTL)": dict(k=5, temperature=None, metric="l2", normalize=False),
}


def best_k(scores: Tensor, index: Tensor, k: int, *others: Tensor) -> tuple[Tensor, ...]:
    """Per row, the ``k`` best columns by (score descending, bank index ascending): exact, with
    ties resolved the same way whatever the order of the columns. ``others`` (same shape) are
    taken along. Returns (scores, index, *others), best first."""
    by_index = index.argsort(dim=1)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    top = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return (scores.gather(1, top), index.gather(1, top), *(o.gather(1, by_index).gather(1, top) for o in others))


def _chunk_top_k(scores: Tensor, first: int, k: int) -> tuple[Tensor, Tensor]:
    """:func:`best_k` of one bank chunk (columns = bank rows ``first, first + 1, ...``): top-k,
    and a stable sort only for the rows whose k-th score is tied beyond the k taken."""
    k = min(k, scores.shape[1])
    top, columns = scores.topk(k, dim=1)
    tied = (scores >= top[:, -1:]).sum(1) > k
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        exact = scores[rows].sort(dim=1, descending=True, stable=True)  # columns ascend: the lower index first
        top[rows], columns[rows] = exact.values[:, :k], exact.indices[:, :k]
    return top, columns + first


def _search_torch(
    bank, queries: Tensor, k: int, metric: Metric, normalize: bool, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Exact top-k on the queries' device, chunked over queries and over the bank (a running
    merge), the bank read chunk by chunk from wherever it is (tensor or FeatureFile)."""
    device = queries.device
    best_s = torch.full((len(queries), 0), float("-inf"), device=device)
    best_i = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    for start in range(0, len(bank), chunk_size):
        part = bank[start : start + chunk_size].to(device, torch.float32, non_blocking=True)
        if normalize:
            part = F.normalize(part, dim=1)
        part_sq = part.square().sum(1) if metric == "l2" else None
        new_s, new_i = [], []
        for chunk in queries.split(chunk_size):
            s = chunk @ part.T
            if metric == "l2":  # -||q - b||^2 up to the query's own norm (constant per row)
                s = 2 * s - part_sq
            top_s, top_i = _chunk_top_k(s, start, k)
            new_s.append(top_s)
            new_i.append(top_i)
        best_s, best_i = best_k(torch.cat([best_s, torch.cat(new_s)], 1), torch.cat([best_i, torch.cat(new_i)], 1), k)
    return best_s, best_i


FAISS_EXTRAS = (
    "pip install 'spectral-ssl[faiss-cpu]', or 'spectral-ssl[faiss-gpu]' on a Linux x86-64 CUDA machine (not both: "
    "they install the same faiss package)"
)


def import_faiss():
    """The ``faiss`` module, an optional extra: ``backend="torch"`` (the default) needs none."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(f"backend='faiss' needs faiss: {FAISS_EXTRAS}; or use backend='torch'") from error
    return faiss


def _search_faiss(
    bank: Tensor, queries: Tensor, k: int, metric: Metric, normalize: bool, chunk_size: int
) -> tuple[Tensor, Tensor]:
    faiss = import_faiss()
    bank = F.normalize(bank.float(), dim=1) if normalize else bank.float()
    index = faiss.IndexFlatIP(bank.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(bank.shape[1])
    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(bank.cpu().contiguous().numpy())
    scores, indices = [], []
    for chunk in queries.float().cpu().split(chunk_size):
        s, i = index.search(chunk.contiguous().numpy(), k)
        scores.append(torch.from_numpy(s))
        indices.append(torch.from_numpy(i))
    scores, indices = torch.cat(scores).to(queries.device), torch.cat(indices).to(queries.device)
    return best_k(scores if metric == "cosine" else -scores, indices, k)  # higher is nearer; ties by index


def _merge_shards(scores: Tensor, index: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Every rank's top-k gathered and merged by :func:`best_k`: the top-k of the whole bank."""
    device = backend_device()
    parts = []
    for local in (scores, index, labels):
        gathered = [torch.empty_like(local, device=device) for _ in range(world_size())]
        dist.all_gather(gathered, local.to(device).contiguous())
        parts.append(torch.cat(gathered, dim=1).to(scores.device))
    merged_scores, _, merged_labels = best_k(parts[0], parts[1], k, parts[2])
    return merged_scores, merged_labels


def knn_predict(
    bank,
    bank_labels: Tensor,
    queries: Tensor,
    *,
    k: int = 20,
    temperature: float | None = 0.07,
    metric: Metric = "cosine",
    normalize: bool = True,
    num_classes: int | None = None,
    backend: Backend = "auto",
    chunk_size: int = 4096,
    sharded: bool = False,
) -> Tensor:
    """Class predictions (on the CPU) for ``queries`` by kNN against ``bank`` (see the module
    docstring). The search runs on the queries' device.

    With ``temperature`` the k nearest vote with weight exp(cosine similarity / T) (the weight
    needs the cosine, so it requires ``metric="cosine"``); with None each votes 1 (majority;
    ties go to the smallest label). ``backend``: "torch" (= "auto") or "faiss". ``sharded``: under
    DDP, ``bank`` / ``bank_labels`` are this rank's contiguous share, in rank order, and every
    rank passes the same queries; all ranks return the single-process answer.
    """
    if len(bank) != len(bank_labels):
        raise ValueError(f"bank has {len(bank)} rows but {len(bank_labels)} labels")
    if temperature is not None and metric != "cosine":
        raise ValueError("similarity-weighted votes need metric='cosine'; use temperature=None for the L2 protocol")
    sharded = sharded and world_size() > 1
    sizes = torch.tensor(
        [len(bank), int(bank_labels.max()) + 1 if len(bank) else 0], device=backend_device() if sharded else "cpu"
    )
    if sharded:
        counts = [torch.empty_like(sizes) for _ in range(world_size())]
        dist.all_gather(counts, sizes)
        counts = torch.stack(counts).cpu()
        total, first, classes = (
            int(counts[:, 0].sum()),
            int(counts[: dist.get_rank(), 0].sum()),
            int(counts[:, 1].max()),
        )
    else:
        total, first, classes = len(bank), 0, int(sizes[1])
    if not 1 <= k <= total:
        raise ValueError(f"k={k} needs a bank of at least k images (and k >= 1); the bank has {total}")
    num_classes = num_classes or classes
    queries = F.normalize(queries.float(), dim=1) if normalize else queries.float()
    if len(bank):
        search = _search_faiss if backend == "faiss" else _search_torch
        scores, index = search(bank, queries, k, metric, normalize, chunk_size)
    else:  # an empty share: nothing to offer to the merge
        scores = torch.full((len(queries), 0), float("-inf"), device=queries.device)
        index = torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device)
    neighbour_labels = bank_labels.to(queries.device)[index]
    if sharded:  # pad every share's answer to k columns (a share may hold fewer), then merge
        missing = k - scores.shape[1]
        scores = F.pad(scores, (0, missing), value=float("-inf"))
        index = F.pad(index + first, (0, missing), value=total)  # padding sorts after every real row
        neighbour_labels = F.pad(neighbour_labels, (0, missing), value=-1)
        scores, neighbour_labels = _merge_shards(scores, index, neighbour_labels, k)
    votes = torch.zeros(len(scores), num_classes, device=scores.device, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels.clamp(min=0), vote_weights(scores, temperature) * (neighbour_labels >= 0))
    return votes.argmax(dim=1).cpu()


def vote_weights(scores: Tensor, temperature: float | None) -> Tensor:
    """The k neighbours' votes (N, k), float64: 1 each without a ``temperature``, else
    exp(sim / T) scaled by the row's common factor exp(-max sim / T), i.e. exp((sim - max) / T)
    in (0, 1]. The factor changes no vote's share, and the exponent can never overflow: exp(sim / T)
    itself is inf in float32 from sim / T > 88.7 (cosine 1 at T < 0.0113), where every class
    would tie. Padding neighbours (score -inf) weigh 0."""
    if temperature is None:
        return torch.ones_like(scores, dtype=torch.float64)
    scores = scores.double()
    return ((scores - scores.max(dim=1, keepdim=True).values) / temperature).exp()


def knn_accuracy(bank, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, **kwargs) -> float:
    """Top-1 accuracy (in [0, 1]) of :func:`knn_predict`; keyword arguments are passed on."""
    predictions = knn_predict(bank, bank_labels, queries, **kwargs)
    return (predictions == query_labels.cpu()).float().mean().item()

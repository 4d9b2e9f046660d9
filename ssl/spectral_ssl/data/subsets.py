"""Fixed, seeded, class-balanced subsets: the bounded image sets the monitors evaluate on."""

from __future__ import annotations

import torch
from torch import Tensor


def balanced_order(labels: Tensor, seed: int = 0) -> Tensor:
    """A seeded permutation of ``range(len(labels))`` that takes the classes in turn: first one
    image of every class, then a second of every class, and so on (within a class in a seeded
    random order; classes that run out drop out). Any prefix of it is therefore as balanced as
    the classes allow (class counts differ by at most one while every class still has images),
    and a larger budget extends a smaller one's subset."""
    labels = torch.as_tensor(labels).long()
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("balanced subsets need labelled images (labels >= 0)")
    permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[permutation]
    by_class = torch.sort(shuffled, stable=True).indices  # grouped by class, the permuted order kept inside
    grouped = shuffled[by_class]
    counts = torch.bincount(grouped)
    first_of_class = counts.cumsum(0) - counts
    rank_in_class = torch.arange(len(grouped)) - first_of_class[grouped]
    turn = rank_in_class * len(counts) + grouped  # round r, then class order
    return permutation[by_class[torch.argsort(turn)]]


def balanced_subset(labels: Tensor, size: int | None, seed: int = 0) -> Tensor:
    """Sorted indices of a class-balanced subset of at most ``size`` images (all of them, in
    order, when ``size`` is None or not smaller than the set): the first ``size`` of
    :func:`balanced_order`."""
    if size is None or size >= len(labels):
        return torch.arange(len(labels))
    if size < 1:
        raise ValueError(f"a subset needs at least one image, not {size}")
    return torch.sort(balanced_order(labels, seed)[:size]).values


def stratified_fraction(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Sorted indices of ``fraction`` of the images of every class: round(``fraction`` x n_c) of
    class c's n_c images (at least one), so exactly k per class where the fraction divides the
    class, the classes' proportions kept where it does not. Seeded: the same images for the
    same ``seed``, and a smaller fraction's images are among a larger one's (the first of the
    same per-class order). ValueError outside 0 < ``fraction`` <= 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a label fraction is in (0, 1], not {fraction}")
    labels = torch.as_tensor(labels).long()
    permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = permutation[torch.sort(labels[permutation], stable=True).indices]  # grouped, permuted inside
    grouped = labels[by_class]
    counts = torch.bincount(grouped)
    rank_in_class = torch.arange(len(grouped)) - (counts.cumsum(0) - counts)[grouped]
    keep = torch.floor(counts.double() * fraction + 0.5).long().clamp(min=1)
    return torch.sort(by_class[rank_in_class < keep[grouped]]).values

"""One rule for deriving seeds: every random stream of a run (the views of an image in an epoch,
the device augmentation of a batch, W-MSE's sub-batches) is seeded from the run's seed and its
position, never from a global generator, so a resumed or distributed run draws what a single
uninterrupted one would."""

from __future__ import annotations

SEED_PRIME = 1_000_003


def mix_seeds(*parts: int) -> int:
    """((p0 * P + p1) * P + p2) ...: distinct positions give distinct seeds (P = 1,000,003, a prime)."""
    seed = 0
    for part in parts:
        seed = seed * SEED_PRIME + part
    return seed

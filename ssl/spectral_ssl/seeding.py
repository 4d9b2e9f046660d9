"""One rule for deriving seeds: every random stream of a run is seeded from the run's seed and a
position, never from a global generator, so a resumed run draws what an uninterrupted one would.
The position must say which process draws whenever processes must differ (torch's global
generator is seeded alike on every rank), and must not when they must agree:

================================  ===========================================  =======================
stream                            keyed on                                     across ranks
================================  ===========================================  =======================
views made in DataLoader workers  (seed, epoch, image index)                   differ: each rank's
(CPU; multi-crop: one generator                                                shard holds other
per image for all its crops)                                                   images; no worker id
views made on the device          (seed, epoch, batch number, global rank)     differ (the batch
(``augment_on_device``)                                                        number alone does not)
the shuffle order                 (seed, epoch), then split into rank shards   one order, disjoint
W-MSE's sub-batch permutations    (seed, number of calls)                      equal: every rank
                                                                               whitens the same
                                                                               gathered batch
the online probe's initialisation  0                                           equal (one classifier)
the monitors' held-out subsets    seed 0, class-balanced                       equal (extraction is
                                                                               sharded over them)
================================  ===========================================  =======================

There is no masking or dropout in the training step (timm's ViTs are built with their drop rates
at 0), so nothing draws from the global generator there."""

from __future__ import annotations

SEED_PRIME = 1_000_003


def mix_seeds(*parts: int) -> int:
    """((p0 * P + p1) * P + p2) ...: distinct positions give distinct seeds (P = 1,000,003, a prime)."""
    seed = 0
    for part in parts:
        seed = seed * SEED_PRIME + part
    return seed

"""The normalization papers' claims as experiments, one module each with
``run(out, seeds, quick, jobs) -> markdown`` (``jobs``: processes, for those that run the
product's commands); run them with ``python tools/science.py <name>``."""

from __future__ import annotations

EXPERIMENTS: dict[str, tuple[str, int]] = {
    "approximation": ("1. universal approximation: LN vs PLN-k / PLS-k / RMSNorm / tanh / ReLU networks", 3),
    "smoothness": ("2. width needed against the target's Lipschitz constant: PLN vs ReLU vs tanh", 3),
    "depth": ("3. PLN as activation and norm in a deep MLP on digits", 3),
    "capacity": ("4. LN-Net capacity: random labels, and the width-3 construction", 3),
    "groups": ("5. group partition amplifies LN's nonlinearity", 3),
    "transformers": ("6. PLN / LN-G / RMSNorm vs LN in a small ViT, supervised and INTL", 5),
    "norm_only": ("7. training only the norms of a random ResNet", 3),
}
"""name -> (what it tests, default number of seeds)."""

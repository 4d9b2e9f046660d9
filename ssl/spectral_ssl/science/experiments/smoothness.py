"""Experiment 2, width needed against smoothness (PLN paper, the approximation rate: the width a
one-hidden-layer network needs grows with the target's Lipschitz constant L for a fixed error):
sin(L x) on [-1, 1] (Lipschitz constant exactly L) for L in {1, 4, 16}; for PLN-2, PLN-8, ReLU
and tanh networks, the smallest width among 4, 8, ..., 256 whose fit reaches sup error <= 0.1
(widths are tried in increasing order per seed; the first that reaches it is the answer)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..report import Experiment, formatted, markdown_table, mean_std, pyplot
from ..training import fit_regression, sup_and_l2_error
from .common import VARIANTS, network

NETWORKS = ("PLN-2", "PLN-8", "tanh", "ReLU")
LIPSCHITZ = (1, 4, 16)
THRESHOLD = 0.1


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:  # jobs: unused (one process)
    widths = (4, 8, 16, 32, 64, 128, 256)
    steps, networks, lipschitz = (2000, NETWORKS, LIPSCHITZ) if not quick else (150, ("PLN-8", "ReLU"), (1, 4))
    if quick:
        widths = (8, 16)
    x, grid = torch.linspace(-1, 1, 401).unsqueeze(1), torch.linspace(-1, 1, 4001).unsqueeze(1)
    experiment = Experiment("smoothness", out, seeds)
    needed: dict[tuple[str, int], list[float]] = {}
    for lip in lipschitz:
        for name in networks:
            for seed in seeds:
                smallest = math.nan
                for width in widths:
                    if width % VARIANTS[name].get("group_size", 1):
                        continue  # PLN-8 starts at width 8 (one block: LN)
                    model = network(name, 1, 1, width, seed=seed)
                    fit_regression(model, x, torch.sin(lip * x), steps=steps, lr=1e-2)
                    sup, l2 = sup_and_l2_error(model, grid, torch.sin(lip * grid))
                    experiment.record(lipschitz=lip, network=name, seed=seed, width=width, sup=sup, l2=l2)
                    if sup <= THRESHOLD:
                        smallest = width
                        break
                needed.setdefault((name, lip), []).append(smallest)
    experiment.summarize(["lipschitz", "network", "width"], ["sup", "l2"])
    rows = []
    for name in networks:
        cells = []
        for lip in lipschitz:
            reached = [w for w in needed[name, lip] if not math.isnan(w)]
            cell = "-" if not reached else formatted(*mean_std(reached), digits=0)
            if len(reached) < len(seeds):
                cell += f" ({len(seeds) - len(reached)} of {len(seeds)} seeds: not at {widths[-1]})"
            cells.append(cell)
        rows.append([name, *cells])
    lines = [
        f"## Width needed against smoothness: sin(L x) on [-1, 1], sup error <= {THRESHOLD}",
        "",
        f"Smallest width reaching it (one hidden layer; widths {', '.join(map(str, widths))}; "
        f"Adam lr 1e-2 cosine, {steps} full-batch steps on 401 points, sup over 4001).",
        "",
        *markdown_table(["network", *(f"L = {lip}" for lip in lipschitz)], rows),
    ]
    experiment.save_figure(_plot(needed, networks, lipschitz, widths[-1]), "width_needed")
    return experiment.write_markdown(lines)


def _plot(needed, networks, lipschitz, widest: int):
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for name in networks:
        means = [mean_std([w if not math.isnan(w) else 2 * widest for w in needed[name, lip]]) for lip in lipschitz]
        axis.errorbar(lipschitz, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=3, label=name)
    axis.axhline(2 * widest, color="0.7", linestyle=":", label=f"not reached at {widest}")
    axis.set(
        xscale="log", yscale="log", xlabel="Lipschitz constant L", ylabel=f"smallest width, sup error <= {THRESHOLD}"
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure

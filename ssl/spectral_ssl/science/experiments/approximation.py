"""Experiment 1, universal approximation (PLN paper, Sec. 3-4): one hidden layer,
Linear -> {LN, RMSNorm, PLN-k, PLS-k, tanh, ReLU} -> Linear, fitted to cos(pi x) on [-2, 2] and
to a 2-D target, at widths 8 ... 256; sup and L2 (RMS) error on a dense grid.

The claim: an LN network of any width has at most one stationary point in x (its output is
(p x + q) / sqrt(a x^2 + b x + c)), so its sup error on cos(pi x) over [-2, 2] is at least 1
(the target alternates 1, -1, 1, -1, 1 at x = -2 ... 2); RMSNorm's output has the same form, and
so has PLN-k at width k (one block is LN). PLN-Nets approximate the target.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...plots import pyplot
from ..report import Experiment, formatted, markdown_table
from ..training import fit_regression, sup_and_l2_error
from .common import error_bar_plot, network

TITLES = {"cos": "cos(pi x) on [-2, 2]", "plane": "sin(pi x) cos(pi y) on [-1, 1]^2"}
NETWORKS = ("LN", "RMSNorm", "PLN-2", "PLN-4", "PLN-8", "PLS-2", "PLS-8", "tanh", "ReLU")


def cosine_target(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(pi x) on ``points`` evenly spaced x in [-2, 2] (x = -2, -1, 0, 1, 2 among them when
    ``points`` - 1 is a multiple of 4)."""
    x = torch.linspace(-2, 2, points).unsqueeze(1)
    return x, torch.cos(math.pi * x)


def plane_target(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin(pi x) cos(pi y) on a ``side`` x ``side`` grid of [-1, 1]^2 (Lipschitz pi sqrt(2))."""
    axis = torch.linspace(-1, 1, side)
    grid = torch.cartesian_prod(axis, axis)
    return grid, (torch.sin(math.pi * grid[:, :1]) * torch.cos(math.pi * grid[:, 1:]))


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:  # jobs: unused (one process)
    targets = {
        "cos": (cosine_target(401), cosine_target(4001), (8, 16, 32, 64, 128, 256)),
        "plane": (plane_target(25), plane_target(101), (16, 64, 256)),
    }
    steps, networks = (2000, NETWORKS) if not quick else (150, ("LN", "PLN-2", "ReLU"))
    plane_steps = steps // 2  # 625 points in 2-D at width 256 cost 5x the 1-D fit a step
    if quick:
        targets = {name: (train, test, (8, 32)) for name, (train, test, _) in targets.items()}
    experiment = Experiment("approximation", out, seeds)
    fits = {}
    for target, ((x, y), (grid, truth), widths) in targets.items():
        for name in networks:
            for width in widths:
                for seed in seeds:
                    model = network(name, x.shape[1], 1, width, seed=seed)
                    mse = fit_regression(model, x, y, steps=steps if target == "cos" else plane_steps, lr=1e-2)
                    sup, l2 = sup_and_l2_error(model, grid, truth)
                    experiment.record(
                        target=target, network=name, width=width, seed=seed, sup=sup, l2=l2, train_mse=mse
                    )
                    if x.shape[1] == 1 and width == widths[-1] and seed == seeds[0]:
                        with torch.no_grad():
                            fits[name] = model.eval()(grid).squeeze(1)
    summary = experiment.summarize(["target", "network", "width"], ["sup", "l2"])
    lines = [
        f"## Universal approximation: one hidden layer, Adam lr 1e-2 cosine, full-batch, {steps} steps on 401 "
        f"points of cos(pi x), {plane_steps} on 25 x 25 of the plane",
        "",
        "sup / L2 (RMS) error on a dense grid (cos: 4001 points of [-2, 2]; plane: 101 x 101 of [-1, 1]^2).",
    ]
    for target, (_, _, widths) in targets.items():
        rows = [r for r in summary if r["target"] == target]
        lines += ["", f"### {TITLES[target]}: sup error", ""]
        cell = {(r["network"], r["width"]): formatted(r["sup_mean"], r["sup_std"]) for r in rows}
        lines += markdown_table(["network", *map(str, widths)], [[n, *(cell[n, w] for w in widths)] for n in networks])
        for metric in ("sup", "l2"):
            figure = error_bar_plot(rows, "width", metric, "network", title=f"{TITLES[target]}: {metric} error")
            experiment.save_figure(figure, f"{metric}_{target}")
    ln_floor = min(r["sup"] for r in experiment.rows if r["network"] == "LN" and r["target"] == "cos")
    lines += ["", f"Smallest LN sup error on cos(pi x) over every width and seed: {ln_floor:.4f} (the bound: >= 1)."]
    experiment.save_figure(_curves(*cosine_target(4001), fits, widths=targets["cos"][2][-1]), "fits_cos")
    return experiment.write_markdown(lines)


def _curves(x, y, fits: dict, widths: int):
    plt = pyplot()
    columns = 3
    rows = -(-len(fits) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, 2.2 * rows), sharex=True, sharey=True, squeeze=False
    )
    for axis, (name, fit) in zip(axes.flat, fits.items()):
        axis.plot(x.squeeze(1), y.squeeze(1), color="0.6", linewidth=2, label="cos(pi x)")
        axis.plot(x.squeeze(1), fit, color="C3", linewidth=1, label="fit")
        axis.set_title(f"{name}, width {widths}", fontsize=8)
        axis.set_ylim(-1.6, 1.6)
    for axis in list(axes.flat)[len(fits) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    return figure

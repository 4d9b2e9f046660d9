"""Experiment 5, group partition amplifies LN's nonlinearity (LN paper, Sec. 4: LN-G, LN over each
of g groups of the features, is more nonlinear than LN, the case g = 1), measured two ways on
the same layer width (32 and 16), group counts 1 (LN), 2, 4, 8, 16:

(a) the plain measure, :func:`~spectral_ssl.science.nonlinearity.hessian_norm`: the median over
256 standard Gaussian inputs of width 32 of the Frobenius norm of LN-G's second derivative
(float64 autograd), beside its closed form sqrt(sum_g 3 s (s - 2) / ||x_g - mean x_g||^4)
(s = 32 / g). The median, not the mean: ||x_g - mean x_g||^2 is chi-square with s - 1 degrees of
freedom, and E[1 / chi2^2] is infinite for s <= 5, so the mean over points would not settle;
(b) the LN paper's measure, :func:`~spectral_ssl.science.nonlinearity.lssr`, on data no linear map
separates: the XOR of four Gaussian blobs in the plane (input LSSR ~ 1). One layer Linear(2 ->
16) -> LN-G(g) is trained (Adam, with a linear read-out) to minimize the SSR of its classes; the
table gives the LSSR of the layer's output, the lowest SSR any linear map after it can reach.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...models.norms import GroupedLayerNorm
from ..nonlinearity import hessian_norm, layer_norm_hessian_norm, lssr, scatter_ratio, ssr
from ..report import Experiment, formatted, markdown_table
from .common import error_bar_plot


def xor_blobs(n: int, generator: torch.Generator, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of the plane: blobs at (1, 1) and (-1, -1) against (1, -1) and (-1, 1), each
    point the centre plus ``spread`` x N(0, I). Same class means (0): no linear map separates them."""
    centres = torch.randint(0, 2, (n, 2), generator=generator) * 2.0 - 1
    x = centres + spread * torch.randn(n, 2, generator=generator)
    same = centres[:, 0] == centres[:, 1]
    return x[same], x[~same]


def trained_lssr(groups: int, x1: torch.Tensor, x2: torch.Tensor, seed: int, steps: int, width: int = 16) -> float:
    torch.manual_seed(seed)
    layer = torch.nn.Sequential(
        torch.nn.Linear(2, width), GroupedLayerNorm(width, num_groups=groups, channels_last=True)
    )
    readout = torch.nn.Linear(width, 1)
    optimizer = torch.optim.Adam([*layer.parameters(), *readout.parameters()], lr=1e-2)
    for _ in range(steps):
        loss = scatter_ratio(readout(layer(x1)), readout(layer(x2)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return lssr(layer(x1), layer(x2))


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:  # jobs: unused (one process)
    width, steps = 32, 60 if quick else 500
    experiment = Experiment("groups", out, seeds)
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        points = torch.randn(64 if quick else 256, width, generator=generator, dtype=torch.float64)
        x1, x2 = xor_blobs(256 if quick else 1024, generator)
        for groups in (1, 2, 4, 8) + (() if quick else (16,)):
            layer = GroupedLayerNorm(width, num_groups=groups, eps=0.0, channels_last=True, affine=False)
            experiment.record(
                measure="hessian",
                groups=groups,
                seed=seed,
                value=hessian_norm(layer, points).median().item(),
                closed_form=layer_norm_hessian_norm(points, width // groups).median().item(),
            )
            if width // 2 // groups >= 2:  # (b)'s layer is 16 wide: groups of at least 2
                experiment.record(
                    measure="lssr",
                    groups=groups,
                    seed=seed,
                    value=trained_lssr(groups, x1, x2, seed, steps),
                    input_lssr=lssr(x1, x2),
                    input_ssr=ssr(x1, x2),
                )
    hessian = experiment.summarize(
        ["groups"],
        ["value", "closed_form"],
        [r for r in experiment.rows if r["measure"] == "hessian"],
        "summary_hessian.csv",
    )
    separation = experiment.summarize(
        ["groups"], ["value", "input_lssr"], [r for r in experiment.rows if r["measure"] == "lssr"], "summary_lssr.csv"
    )
    lines = [
        f"## Group partition: (a) median ||D^2 LN-G(x)||_F at standard Gaussian x of width {width} (eps = 0)",
        "",
        *markdown_table(
            ["groups g", "group size", "autograd (float64)", "closed form"],
            [
                [
                    r["groups"],
                    width // r["groups"],
                    formatted(r["value_mean"], r["value_std"]),
                    formatted(r["closed_form_mean"], r["closed_form_std"]),
                ]
                for r in hessian
            ],
        ),
        "",
        f"## (b) LSSR after one trained Linear(2 -> 16) -> LN-G(g) layer on the XOR blobs ({steps} Adam steps; "
        "lower: the layer made the classes more linearly separable)",
        "",
        *markdown_table(
            ["groups g", "group size", "LSSR of the input", "LSSR after the layer"],
            [
                [
                    r["groups"],
                    16 // r["groups"],
                    formatted(r["input_lssr_mean"], r["input_lssr_std"]),
                    formatted(r["value_mean"], r["value_std"], 4),
                ]
                for r in separation
            ],
        ),
    ]
    plots = {"hessian": (hessian, "median ||D^2 LN-G(x)||_F"), "lssr": (separation, "LSSR after the trained layer")}
    for name, (summary, ylabel) in plots.items():
        for row in summary:
            row["layer"] = "LN-G (g = 1: LN)"
        experiment.save_figure(error_bar_plot(summary, "groups", "value", "layer", title=ylabel, ylabel=ylabel), name)
    return experiment.write_markdown(lines)

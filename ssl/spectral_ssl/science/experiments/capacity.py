"""Experiment 4, LN-Net capacity (LN paper, Sec. 3-4: LN is nonlinear enough to fit random labels;
the partition into groups raises the capacity further; width 3 and O(m) LN layers classify m
samples with any labels).

(a) Random labels: train accuracy of a linear network, an LN-Net (Linear -> LN, no activation)
and an LN-G net (4 groups) at equal width (64) and depth (4 hidden layers), trained alike, on
the digits with shuffled labels (1437 images, 10 classes) and on random points (512 Gaussian
points in R^16, random binary labels). A linear network's train accuracy is that of a linear
classifier; anything above it is the norms' nonlinearity.
(b) The construction (:mod:`spectral_ssl.science.construction`): for m random points with
random labels (2 and 10 classes), the number of LN layers it uses and its accuracy, in float64
and with its exact weights (60-digit arithmetic).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...plots import pyplot
from ..construction import DIGITS, construct, verify
from ..report import Experiment, formatted, markdown_table
from ..training import accuracy, fit_classifier
from .common import digits_vectors, network

NETWORKS = ("linear", "LN", "LN-G-4")


def _random_label_sets(seed: int, quick: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(seed)
    x, y, _, _ = digits_vectors()
    shuffled = y[torch.randperm(len(y), generator=generator)]
    points = torch.randn(128 if quick else 512, 16, generator=generator)
    binary = torch.randint(0, 2, (len(points),), generator=generator)
    if quick:
        x, shuffled = x[:256], shuffled[:256]
    return {"digits, shuffled labels": (x, shuffled, 10), "Gaussian points, random labels": (points, binary, 2)}


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:  # jobs: unused (one process)
    epochs = 5 if quick else 150
    experiment = Experiment("capacity", out, seeds)
    for seed in seeds:
        for data, (x, y, classes) in _random_label_sets(seed, quick).items():
            for name in NETWORKS:
                model = network(name, x.shape[1], classes, 64, depth=4, seed=seed)
                fit_classifier(model, x, y, epochs=epochs, lr=3e-3, batch_size=256, seed=seed)
                experiment.record(
                    part="random labels", data=data, network=name, seed=seed, train_top1=accuracy(model, x, y)
                )
    sizes = (8, 16, 32) if quick else (8, 16, 32, 64, 128)
    for seed in seeds:
        for classes in (2, 10):
            for m in sizes:
                generator = torch.Generator().manual_seed(1000 * seed + m)
                x, y = torch.randn(m, 16, generator=generator), torch.randint(0, classes, (m,), generator=generator)
                net = construct(x, y, seed=seed)
                experiment.record(
                    part="construction",
                    data=f"{classes} classes",
                    network=f"m = {m}",
                    m=m,
                    seed=seed,
                    ln_layers=net.ln_layers,
                    bound=1 + m - len(y.unique()),
                    top1_float64=verify(net, x, y),
                    top1_exact=verify(net, x, y, digits=DIGITS),
                    min_angle=net.min_angle,
                )
    fitted = [r for r in experiment.rows if r["part"] == "random labels"]
    built = [r for r in experiment.rows if r["part"] == "construction"]
    summary = experiment.summarize(["data", "network"], ["train_top1"], fitted)
    data_sets = list(dict.fromkeys(r["data"] for r in summary))
    cell = {
        (r["data"], r["network"]): formatted(r["train_top1_mean"], r["train_top1_std"], 2, percent=True)
        for r in summary
    }
    lines = [
        f"## LN-Net capacity (a): train top-1 on random labels, width 64, 4 hidden layers, Adam lr 3e-3 cosine, "
        f"batch 256, {epochs} epochs",
        "",
        *markdown_table(["data", *NETWORKS], [[d, *(cell[d, n] for n in NETWORKS)] for d in data_sets]),
    ]
    measures = ["ln_layers", "top1_float64", "top1_exact", "min_angle"]
    constructed = experiment.summarize(["data", "m"], measures, built, "summary_construction.csv")
    lines += [
        "",
        "## LN-Net capacity (b): the width-3 construction on m random points in R^16 with random labels",
        "",
        *markdown_table(
            [
                "labels",
                "m",
                "LN layers (1 + m - K)",
                f"top-1, exact weights ({DIGITS} digits)",
                "top-1, float64",
                "smallest angle left",
            ],
            [
                [
                    r["data"],
                    r["m"],
                    formatted(r["ln_layers_mean"], r["ln_layers_std"], 1),
                    formatted(r["top1_exact_mean"], r["top1_exact_std"], 2, percent=True),
                    formatted(r["top1_float64_mean"], r["top1_float64_std"], 2, percent=True),
                    f"{min(b['min_angle'] for b in built if b['data'] == r['data'] and b['m'] == r['m']):.1e} rad",
                ]
                for r in constructed
            ],
        ),
    ]
    experiment.save_figure(_depth_plot(built), "construction_depth")
    return experiment.write_markdown(lines)


def _depth_plot(built: list[dict]):
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for data in dict.fromkeys(r["data"] for r in built):
        rows = [r for r in built if r["data"] == data]
        axis.scatter([r["m"] for r in rows], [r["ln_layers"] for r in rows], label=data, s=14)
    top = max(r["m"] for r in built)
    axis.plot([1, top], [1, top], color="0.6", linestyle=":", label="m")
    axis.set(
        xscale="log", yscale="log", xlabel="samples m", ylabel="LN layers used", title="width-3 LN-Net construction"
    )
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure

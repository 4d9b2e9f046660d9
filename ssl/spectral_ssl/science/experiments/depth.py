"""Experiment 3, PLN as activation and norm at depth (PLN paper: PLN alone, with no other
nonlinearity, trains deep networks): an MLP of 8 hidden layers of width 128 on the digits (64-d
standardized pixels, 1437 training / 360 held-out images) with each hidden layer Linear -> PLN-8
(nothing else), Linear -> ReLU, Linear -> LN -> ReLU, or Linear only (a linear classifier in
disguise: the baseline any nonlinearity must beat)."""

from __future__ import annotations

from pathlib import Path

from ..report import Experiment, formatted, markdown_table
from ..training import accuracy, fit_classifier
from .common import bar_plot, digits_vectors, network

NETWORKS = ("PLN-8", "ReLU", "LN-ReLU", "linear")


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:  # jobs: unused (one process)
    depth, width = 8, 128
    epochs = 3 if quick else 40
    train_x, train_y, test_x, test_y = digits_vectors()
    experiment = Experiment("depth", out, seeds)
    for name in NETWORKS:
        for seed in seeds:
            model = network(name, 64, 10, width, depth=depth, seed=seed)
            loss = fit_classifier(model, train_x, train_y, epochs=epochs, lr=1e-3, seed=seed)
            experiment.record(
                network=name,
                seed=seed,
                train_loss=loss,
                train_top1=accuracy(model, train_x, train_y),
                test_top1=accuracy(model, test_x, test_y),
            )
    summary = experiment.summarize(["network"], ["train_loss", "train_top1", "test_top1"])
    rows = [
        [
            r["network"],
            formatted(r["train_loss_mean"], r["train_loss_std"], 4),
            formatted(r["train_top1_mean"], r["train_top1_std"], 2, percent=True),
            formatted(r["test_top1_mean"], r["test_top1_std"], 2, percent=True),
        ]
        for r in summary
    ]
    lines = [
        f"## Depth: {depth} hidden layers of {width} on the digits, Adam lr 1e-3 cosine, batch 128, {epochs} epochs",
        "",
        *markdown_table(["hidden layer", "last-epoch train loss", "train top-1", "held-out top-1"], rows),
    ]
    metrics = {"train_top1": "train", "test_top1": "held-out"}
    figure = bar_plot(summary, "network", metrics, title=f"digits, {depth} x {width} MLP", ylabel="top-1")
    experiment.save_figure(figure, "test_top1")
    return experiment.write_markdown(lines)

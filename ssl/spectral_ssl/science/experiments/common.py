"""What the experiments share: the named network variants, the digits as flat vectors, and the
error-bar plot of a metric against a swept value."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ...plots import pyplot
from ..mlp import mlp

VARIANTS: dict[str, dict] = {
    "LN": {"norm": "ln", "act": "identity"},
    "RMSNorm": {"norm": "rms", "act": "identity"},
    **{f"PLN-{k}": {"norm": "pln", "act": "identity", "group_size": k} for k in (2, 4, 8)},
    **{f"PLS-{k}": {"norm": "pls", "act": "identity", "group_size": k} for k in (1, 2, 4, 8)},
    **{f"LN-G-{g}": {"norm": "lng", "act": "identity", "groups": g} for g in (2, 4, 8, 16)},
    "tanh": {"norm": "none", "act": "tanh"},
    "sigmoid": {"norm": "none", "act": "sigmoid"},
    "ReLU": {"norm": "none", "act": "relu"},
    "LN-ReLU": {"norm": "ln", "act": "relu"},
    "linear": {"norm": "none", "act": "identity"},
}
"""A network's name in the tables -> the :func:`~spectral_ssl.science.mlp.mlp` options of its hidden
layers (``PLN-k``: Linear -> PLN with blocks of k -> ..., no activation; ``LN-G-g``: g groups)."""


def command_arguments(config: str, out: Path, run_name: str, seed: int, epochs: int) -> list[str]:
    """The options every experiment run through the product's commands shares: the shipped
    ``config``, its run folder ``out/runs/<run_name>`` started afresh, ``seed``, ``epochs`` (0: the
    quick budget, 1 epoch of 2 batches), no progress bar nor model summary."""
    return [
        *(["--trainer.limit_train_batches=2"] if epochs == 0 else []),
        *("--config", config, "--output_dir", str(out / "runs"), "--run_name", run_name),
        *("--resume=false", "--overwrite=true", f"--seed_everything={seed}", f"--trainer.max_epochs={max(epochs, 1)}"),
        *("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"),
    ]


def in_processes(function: Callable, configurations: list[tuple], jobs: int) -> Iterator:
    """``function(*configuration)`` for each configuration, yielded in order: in this process when
    ``jobs`` is 1, else in ``jobs`` spawned processes of one torch thread each (on 2 cores, two
    small single-threaded runs side by side finish sooner than one after another with 2 threads
    each). Results do not depend on the order the processes finish in, but may differ in the last
    float digits between ``jobs`` 1 and more (one thread against two)."""
    if jobs <= 1:
        yield from (function(*configuration) for configuration in configurations)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(function, *zip(*configurations, strict=True))


def network(variant: str, in_features: int, out_features: int, width: int, depth: int = 1, seed: int = 0):
    """The ``variant`` network (a :data:`VARIANTS` name) initialised from ``seed``."""
    torch.manual_seed(seed)
    return mlp(in_features, out_features, width, depth=depth, **VARIANTS[variant])


def digits_vectors(seed: int = 0, test_size: int = 360) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as 64-d vectors standardized with the training split's statistics:
    (train_x, train_y, test_x, test_y), the stratified split of the digits datamodule (1437 /
    360 images for ``seed`` 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.data).float()
    y = torch.from_numpy(digits.target).long()
    train, test = train_test_split(range(len(y)), test_size=test_size, random_state=seed, stratify=digits.target)
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
    return (x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]


def error_bar_plot(
    summary: list[dict], x_key: str, metric: str, series_key: str, *, title: str, log_x=True, log_y=True, ylabel=None
):
    """One line per ``series_key`` value: ``<metric>_mean`` +- ``<metric>_std`` against ``x_key``."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for series in dict.fromkeys(row[series_key] for row in summary):
        rows = [r for r in summary if r[series_key] == series]
        axis.errorbar(
            [r[x_key] for r in rows],
            [r[f"{metric}_mean"] for r in rows],
            yerr=[r[f"{metric}_std"] for r in rows],
            marker="o",
            markersize=3,
            capsize=2,
            label=str(series),
        )
    axis.set(xlabel=x_key, ylabel=ylabel or metric, title=title)
    if log_x:
        axis.set_xscale("log", base=2)
    if log_y:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    return figure


def bar_plot(summary: list[dict], label_key: str, metrics: dict[str, str], *, title: str, ylabel: str):
    """Grouped bars: for each row (labelled by ``label_key``) one bar per metric
    (``{metric: legend}``), at ``<metric>_mean`` with ``<metric>_std`` error bars."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.2 + 1.1 * len(summary), 3.8))
    width = 0.8 / len(metrics)
    for i, (metric, legend) in enumerate(metrics.items()):
        axis.bar(
            [j + i * width for j in range(len(summary))],
            [r[f"{metric}_mean"] for r in summary],
            width,
            yerr=[r[f"{metric}_std"] for r in summary],
            capsize=3,
            label=legend,
        )
    axis.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(summary))], [str(r[label_key]) for r in summary], fontsize=8
    )
    axis.set(title=title, ylabel=ylabel)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    return figure

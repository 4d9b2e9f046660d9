"""The eigen-spectrum of an embedding and the numbers read off it."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..plots import pyplot


def covariance_spectrum(features: Tensor) -> Tensor:
    """Eigenvalues (descending, float64, clamped at 0) of the covariance of (N, D) features."""
    x = features.double()
    x = x - x.mean(dim=0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def effective_rank(eigenvalues: Tensor) -> float:
    """exp of the Shannon entropy of the normalized spectrum p_i = lambda_i / sum lambda
    (Roy & Vetterli, 2007): D for an isotropic spectrum, 1 for a rank-one one."""
    p = eigenvalues.double().clamp_min(0)
    p = p / p.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).item()


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of p_k = s_k / sum s + eps, with
    s_k the singular values of the (N, D) feature matrix itself (not centred)."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return torch.exp(-(p * p.log()).sum()).item()


def condition_number(eigenvalues: Tensor) -> float:
    """lambda_max / lambda_min of the covariance (inf when it is singular)."""
    smallest = float(eigenvalues.min())
    return float(eigenvalues.max()) / smallest if smallest > 0 else float("inf")


def spectrum_summary(features: Tensor, eigenvalues: Tensor | None = None) -> dict[str, float]:
    """Effective rank, RankMe and condition number of (N, D) features, and their width D
    (``eigenvalues``: their :func:`covariance_spectrum`, when already computed)."""
    eigenvalues = covariance_spectrum(features) if eigenvalues is None else eigenvalues
    return {
        "effective_rank": effective_rank(eigenvalues),
        "rankme": rankme(features),
        "condition_number": condition_number(eigenvalues),
        "dim": float(features.shape[1]),
    }


def numerical_rank(eigenvalues: Tensor, num_samples: int | None = None, precision=torch.float32) -> int:
    """How many (descending) eigenvalues are directions of the data rather than round-off: those
    above lambda_1 x max(N, D) x the machine epsilon of the features' ``precision`` (numpy's
    ``matrix_rank`` rule; float32, what features are computed in), and at most N - 1 for
    ``num_samples`` N (centring removes one). An architecture's own cap (PLN as the activation)
    shows up as the first rule."""
    values = eigenvalues.double()
    if len(values) == 0 or values[0] <= 0:
        return 0
    tolerance = values[0] * max(num_samples or 0, len(values)) * torch.finfo(precision).eps
    rank = int((values > tolerance).sum())
    return rank if num_samples is None else min(rank, num_samples - 1)


def plot_spectra(
    spectra: Mapping[str, Tensor],
    title: str = "",
    num_samples: int | None = None,
    summaries: Mapping[str, Mapping[str, float]] | None = None,
):
    """A log-log plot of each spectrum normalized by its largest eigenvalue (lambda_i / lambda_1
    against i), each curve stopping at its :func:`numerical_rank` (``num_samples``: the images
    the spectra come from); with ``summaries`` (:func:`spectrum_summary` per name) the legend
    gives each one's effective rank and RankMe. Returns the matplotlib Figure."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4), dpi=100)
    for name, values in spectra.items():
        values = values.double()[: numerical_rank(values, num_samples)]
        label = name
        if summaries and name in summaries:
            label = f"{name}: eff. rank {summaries[name]['effective_rank']:.1f}, RankMe {summaries[name]['rankme']:.1f}"
        axes.loglog(torch.arange(1, len(values) + 1).numpy(), (values / values[0]).numpy(), label=label)
    axes.set_xlabel("index i")
    axes.set_ylabel("eigenvalue / largest")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_spectra(
    spectra: Mapping[str, Tensor],
    out_dir: str | Path,
    title: str = "",
    num_samples: int | None = None,
    summaries: Mapping[str, Mapping[str, float]] | None = None,
    figure=None,
) -> tuple[Path, Path]:
    """``spectrum.png`` (see :func:`plot_spectra`; ``figure``: that plot already drawn) and
    ``spectrum.csv`` (one column of eigenvalues per features, descending, all of them) in
    ``out_dir``. The figure is closed once saved."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = figure or plot_spectra(spectra, title, num_samples, summaries)
    png = out_dir / "spectrum.png"
    figure.savefig(png)
    plt.close(figure)
    path = out_dir / "spectrum.csv"
    names = list(spectra)
    longest = max(len(v) for v in spectra.values())
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", *names])
        for i in range(longest):
            writer.writerow([i + 1, *(repr(float(spectra[n][i])) if i < len(spectra[n]) else "" for n in names)])
    return png, path


def publish_spectra(
    spectra: Mapping[str, Tensor],
    summaries: Mapping[str, Mapping[str, float]],
    title: str,
    num_samples: int,
    step: int,
    experiment=None,
    out_dir: str | Path | None = None,
) -> None:
    """The plot of ``spectra`` (:func:`plot_spectra`) added to TensorBoard at ``step`` when
    ``experiment`` is a SummaryWriter (a TensorBoardLogger's ``experiment``), and written with
    the CSV to ``out_dir`` (:func:`write_spectra`) when one is given; nothing else is needed of
    the caller (the spectrum monitor computes, this writes)."""
    figure = plot_spectra(spectra, title, num_samples=num_samples, summaries=summaries)
    if hasattr(experiment, "add_figure"):  # rendered into the event file now
        experiment.add_figure("spectrum", figure, global_step=step, close=False)
    if out_dir is not None:
        write_spectra(spectra, out_dir, figure=figure)
    else:
        pyplot().close(figure)

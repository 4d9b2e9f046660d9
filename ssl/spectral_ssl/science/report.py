"""What every experiment writes: one run folder with the per-seed rows (``results.csv``), the
summary over seeds (``summary.csv``, mean +- std), the printed table (``summary.md``, with the
command and wall time), plots (PNG), and paired comparisons that say when a difference is noise."""

from __future__ import annotations

import csv
import math
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..plots import pyplot


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), NaNs ignored."""
    array = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(array) == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def formatted(mean: float, std: float, digits: int = 3, percent: bool = False) -> str:
    """``mean +- std`` with ``digits`` decimals (in % with ``percent``), ``-`` for NaN."""
    if math.isnan(mean):
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    return f"{scale * mean:.{digits}f} +- {scale * std:.{digits}f}{unit}"


@dataclass(frozen=True)
class PairedDifference:
    """B - A over paired seeds: the mean difference, a 95% bootstrap interval of it and the paired
    t-test's two-sided p-value. ``noise`` unless both say otherwise: the interval excludes 0 and
    p < 0.05 (with few seeds a percentile bootstrap interval is too narrow on its own)."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int

    @property
    def noise(self) -> bool:
        return self.low <= 0 <= self.high or not self.p_value < 0.05

    def __str__(self) -> str:
        verdict = "within noise" if self.noise else ("higher" if self.mean > 0 else "lower")
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}], p = {self.p_value:.2g} (n = {self.n}): {verdict}"


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedDifference:
    """Compares two measurements made on the same seeds (``a[i]`` and ``b[i]`` share seed i): a
    percentile bootstrap of the mean per-seed difference (scipy.stats.bootstrap, 10,000 resamples,
    seeded) and the paired t-test (scipy.stats.ttest_rel). When every seed gives the same
    difference, the interval is that value and p is 1 if it is 0, else 0 (no spread: a difference).
    Needs >= 2 seeds."""
    from scipy import stats

    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(diff) < 2:
        raise ValueError(f"a paired comparison needs >= 2 seeds, got {len(diff)}")
    if np.ptp(diff) == 0:
        return PairedDifference(
            float(diff[0]), float(diff[0]), float(diff[0]), 1.0 if diff[0] == 0 else math.nan, len(diff)
        )
    interval = stats.bootstrap(
        (diff,),
        np.mean,
        n_resamples=10_000,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    p_value = float(stats.ttest_rel(b, a).pvalue)
    return PairedDifference(float(diff.mean()), float(interval.low), float(interval.high), p_value, len(diff))


@dataclass
class Experiment:
    """One experiment's run folder ``out`` and its rows (one dict per configuration and seed).

    ``record(**row)`` adds a row and rewrites ``results.csv`` (so a long run leaves what it has
    measured so far); ``summarize(keys, metrics)`` groups the rows by ``keys`` and writes
    ``summary.csv`` (each metric's mean, std and seed count) and ``summary.md``."""

    name: str
    out: Path
    seeds: list[int]
    rows: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def record(self, **row: object) -> None:
        self.rows.append(row)
        write_csv(self.out / "results.csv", self.rows)

    def summarize(
        self, keys: Sequence[str], metrics: Sequence[str], rows: list[dict] | None = None, file: str = "summary.csv"
    ) -> list[dict]:
        """``rows`` (default: all) grouped by ``keys`` (first-seen order): for each metric
        ``<m>_mean``, ``<m>_std``; ``seeds`` the number of rows in the group. Written to ``file``."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows if rows is None else rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
        summary = []
        for key, rows in groups.items():
            entry = dict(zip(keys, key, strict=True), seeds=len(rows))
            for metric in metrics:
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_std([float(r[metric]) for r in rows])
            summary.append(entry)
        write_csv(self.out / file, summary)
        return summary

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def write_markdown(self, lines: Iterable[str]) -> str:
        """Writes ``summary.md``: the given lines, then the command and the wall time; returns it."""
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv[0] else self.name
        text = "\n".join(
            [
                *lines,
                "",
                f"Seeds {', '.join(map(str, self.seeds))}; mean +- std over seeds (sample std). "
                f"Command: `python tools/{command}`; wall time {self.seconds:.0f} s.",
            ]
        )
        (self.out / "summary.md").write_text(text + "\n")
        return text

    def save_figure(self, figure, name: str) -> Path:
        path = self.out / f"{name}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        pyplot().close(figure)
        return path


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV, columns in first-seen order across the rows."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines

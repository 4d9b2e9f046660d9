"""The normalization papers' claims as experiments (docs/science.md has the measured tables).

    python tools/science.py {approximation,smoothness,depth,capacity,groups,transformers,norm_only,all}
                            [--seeds N] [--quick] [--jobs 2] [--out checkpoints/science]

Each experiment trains with seeds 0 .. N-1 (its default: 3; transformers 5), prints a table of
mean +- std over the seeds, and writes to ``--out/<experiment>/``: ``results.csv`` (one row per
configuration and seed), ``summary.csv`` and ``summary.md`` (with the command and the wall time)
and its plots as PNG. ``--quick``: a budget of seconds (a few configurations, short training),
for tests and a first look; its numbers are not the claims'.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from spectral_ssl.science.experiments import EXPERIMENTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    listing = "\n".join(f"  {name:14} {about} ({seeds} seeds)" for name, (about, seeds) in EXPERIMENTS.items())
    parser = argparse.ArgumentParser(
        description=__doc__ + "\nexperiments:\n" + listing, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default: the experiment's)")
    parser.add_argument("--quick", action="store_true", help="a budget of seconds, for tests")
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "science", help="parent of the run folders")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the experiments that run the product's commands (transformers, norm_only)",
    )
    options = parser.parse_args(argv)
    if options.seeds is not None and options.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {options.seeds}")
    names = list(EXPERIMENTS) if options.experiment == "all" else [options.experiment]
    for name in names:
        seeds = list(range(options.seeds or EXPERIMENTS[name][1]))
        started = time.perf_counter()
        module = importlib.import_module(f"spectral_ssl.science.experiments.{name}")
        text = module.run(options.out / name, seeds, options.quick, options.jobs)
        print(text, f"\n[{name}: {time.perf_counter() - started:.0f} s, written to {options.out / name}]\n", flush=True)


if __name__ == "__main__":
    main()

"""Every experiment's quick budget, run as users run it (``python tools/science.py``, a real
subprocess): each writes its CSV, summary and PNG, and the claims the quick budget can already
show hold (the LN network's floor on cos(pi x), PLN's fit, the construction's exactness)."""

import csv
import subprocess
import sys

import pytest

from spectral_ssl.science.experiments import EXPERIMENTS

pytestmark = pytest.mark.slow  # real subprocess runs


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, root):
    out = tmp_path_factory.mktemp("science")
    command = [sys.executable, str(root / "tools" / "science.py"), "all", "--quick", "--seeds", "2", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def rows(path):
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_quick_run_writes_its_tables_and_plots(quick_runs, name):
    out, stdout = quick_runs
    folder = out / name
    assert len(rows(folder / "results.csv")) >= 2
    assert list(folder.glob("summary*.csv")) and list(folder.glob("*.png"))
    summary = (folder / "summary.md").read_text()
    assert "+-" in summary and "Seeds 0, 1" in summary and "wall time" in summary
    assert f"[{name}: " in stdout


def test_ln_network_floor_and_pln_fit(quick_runs):
    out, _ = quick_runs
    cosine = [r for r in rows(out / "approximation" / "results.csv") if r["target"] == "cos"]
    ln = [float(r["sup"]) for r in cosine if r["network"] == "LN"]
    assert ln and min(ln) >= 1.0  # the PLN paper's Theorem: no LN network gets below 1 (the grid holds -2 ... 2)
    pln = [float(r["sup"]) for r in cosine if r["network"] == "PLN-2" and r["width"] == "32"]
    assert pln and max(pln) < 0.6  # 150 steps already fit cos(pi x) this well at width 32 (0.36 - 0.42 measured)


def test_construction_is_exact_and_the_hessian_matches_its_closed_form(quick_runs):
    out, _ = quick_runs
    built = [r for r in rows(out / "capacity" / "results.csv") if r["part"] == "construction"]
    assert built and all(float(r["top1_exact"]) == 1.0 for r in built)
    assert all(int(r["ln_layers"]) == int(r["bound"]) for r in built)
    hessian = [r for r in rows(out / "groups" / "results.csv") if r["measure"] == "hessian"]
    assert hessian and all(float(r["value"]) == pytest.approx(float(r["closed_form"]), rel=1e-8) for r in hessian)


def test_seeds_must_be_positive(root):
    result = subprocess.run(
        [sys.executable, str(root / "tools" / "science.py"), "groups", "--seeds", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "error: --seeds must be >= 1" in result.stderr

"""The peers benchmark runs as users run it, at its quick size: without lightly (as in CI) it says
that it skips the peer and measures ours; with it, both columns are filled."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real subprocess runs


def test_peers_benchmark_quick(root, tmp_path):
    try:
        import lightly  # noqa: F401

        installed = True
    except ImportError:
        installed = False
    out = tmp_path / "peers.md"
    command = [sys.executable, str(root / "tools" / "benchmark.py"), "peers", "--quick", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 11  # 5 timed rows; training, sampled and pinned memory at 0 and 2 workers
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0  # ours, always measured
        assert (cells[1] != "-") == installed  # the peer's column: filled exactly when lightly is there
    if not installed:
        assert "lightly is not installed" in table and "the peer's columns are skipped" in table


def test_quality_benchmark_quick(root, tmp_path):
    """``tools/benchmark.py quality --quick``: generated IDX files, one method, one seed, one epoch;
    the table and CSV with raw pixels, the random network and the method (lightly's beside it when
    installed); a second invocation into the same folder runs nothing again."""
    command = [sys.executable, str(root / "tools" / "benchmark.py"), "quality", "--quick", "--peer",
               "--methods", "simclr", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        import lightly  # noqa: F401

        peer = ["simclr, lightly"]
    except ImportError:
        peer = []
    lines = (tmp_path / "quality.md").read_text().splitlines()
    if not peer:  # the note first, then the table as with lightly
        assert lines[0].startswith("lightly is not installed") and lines[1] == ""
        lines = lines[2:]
    rows = [line.split("|")[1].strip() for line in lines[4:]]
    assert rows == ["raw pixels", "random network", "simclr", *peer]
    csv_rows = (tmp_path / "quality.csv").read_text().splitlines()
    again = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert again.returncode == 0 and (tmp_path / "quality.csv").read_text().splitlines() == csv_rows
    assert "max_epochs=1` reached" not in again.stdout + again.stderr  # nothing trained the second time

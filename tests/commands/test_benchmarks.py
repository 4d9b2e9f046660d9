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

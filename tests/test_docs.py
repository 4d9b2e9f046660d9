"""The README and docs/: every relative link resolves (file and heading), and the README's
install / test blocks are what `.ci/run` runs."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_resolves_to_a_file_and_heading():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)} links to {target}: no such file"
            if anchor:
                assert anchor in heading_anchors(linked), f"{page.relative_to(ROOT)} links to {target}: no such heading"
            checked += 1
    assert checked >= 20  # the README's pages and the pages' links to each other
    linked_from_readme = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(PAGES[0].read_text())}
    assert set(PAGES[1:]) <= linked_from_readme, "a docs/ page the README does not link"


def test_readme_install_and_test_blocks_are_what_ci_runs():
    extract = next(
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("readme_command")
    )
    blocks = subprocess.run(
        ["bash", "-c", f"{extract}\nreadme_command install; echo ---; readme_command test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert blocks == (
        'python3 -m venv .venv && .venv/bin/pip install -c requirements-lock.txt -e ".[dev]"\n'
        "---\n"
        ".venv/bin/python -m pytest\n"
    )

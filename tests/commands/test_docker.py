"""The Docker image definition: linted with hadolint (no Docker engine runs in CI) and consistent
with the repository (everything it copies exists, it installs the pinned stack)."""

import shutil
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / "docker" / ".hadolint.yaml"), str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_what_exists_and_installs_the_lock_file():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("FROM nvidia/cuda:") and "cudnn-runtime" in lines[0]
    for line in lines:
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    text = DOCKERFILE.read_text()
    assert "pip install -r /tmp/lock.txt" in text and "-e ." in text
    assert "grep -v '^faiss-cpu==' requirements-lock.txt" in text  # never both builds of faiss
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(pin in text for pin in extras["faiss-gpu"])  # the image's faiss is the [faiss-gpu] extra

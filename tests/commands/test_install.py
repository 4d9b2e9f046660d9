"""The distribution: a wheel built from this tree installs and runs the quick start from anywhere,
with the shipped configs found by name."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from spectral_ssl.command import SHIPPED_CONFIGS, resolve_config, resolve_config_arguments

pytestmark = pytest.mark.slow  # real subprocesses: pytest -m 'not slow' skips them

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_folder_is_a_listed_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT / "ssl").parts) for p in (ROOT / "ssl" / "spectral_ssl").rglob("__init__.py")
    }
    assert listed == folders | {"spectral_ssl.configs"}


def test_config_names_resolve_to_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert SHIPPED_CONFIGS == ROOT / "configs"  # the source checkout's, in an editable install
    for name in ("cifar10/intl", "cifar10/intl.yaml", "configs/cifar10/intl.yaml"):
        assert resolve_config(name) == str(ROOT / "configs" / "cifar10" / "intl.yaml")
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert resolve_config("mine.yaml") == "mine.yaml"  # a file that exists wins
    assert resolve_config("{seed_everything: 1}") == "{seed_everything: 1}"  # inline YAML passes through
    assert resolve_config_arguments(["ckpt", "--config=linear/digits", "-c", "quickstart", "--k=5"]) == [
        "ckpt",
        f"--config={ROOT / 'configs' / 'linear' / 'digits.yaml'}",
        "-c",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--k=5",
    ]
    with pytest.raises(FileNotFoundError, match=r"--config cifar10/intll: no such file.*shipped: .*cifar10/intl,"):
        resolve_config("cifar10/intll")


def test_built_wheel_runs_the_quick_start_by_config_name_outside_the_source_tree(tmp_path):
    # sdist, then the wheel from the sdist (python -m build's default), with this venv's setuptools
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("spectral_ssl-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    assert shipped == {
        f"spectral_ssl/configs/{p.relative_to(ROOT / 'configs')}" for p in ROOT.glob("configs/**/*.yaml")
    }
    site = tmp_path / "site"  # the wheel alone; its dependencies are this venv's
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import spectral_ssl; print(spectral_ssl.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)  # the installed copy, not the source tree
    run = subprocess.run(
        [
            str(site / "bin" / "spectral-ssl"),
            "pretrain",
            "--config",
            "quickstart",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--spectrum.every_n_epochs=0",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained" in run.stdout  # the kNN summary
    run_folder = elsewhere / "checkpoints" / "quickstart"
    assert (run_folder / "checkpoints" / "last.ckpt").is_file() and (run_folder / "config.yaml").is_file()

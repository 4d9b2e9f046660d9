"""The distribution: a wheel built from this tree installs and runs the quick start from anywhere,
with the shipped configs found by name."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from spectral_ssl.commands.common import SHIPPED_CONFIGS, command_parser, resolve_config, shipped_config_names

pytestmark = pytest.mark.slow  # real subprocesses: pytest -m 'not slow' skips them

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_folder_is_a_listed_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT / "ssl").parts) for p in (ROOT / "ssl" / "spectral_ssl").rglob("__init__.py")
    }
    assert listed == folders | {"spectral_ssl.configs"}


def test_config_names_resolve_to_the_shipped_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert SHIPPED_CONFIGS == ROOT / "configs"  # the source checkout's, in an editable install
    shipped = ROOT / "configs" / "cifar10"
    for name in ("cifar10/intl", "cifar10/intl.yaml", "configs/cifar10/intl.yaml", str(shipped / "intl.yaml")):
        assert resolve_config(name) == [str(shipped / "base.yaml"), str(shipped / "intl.yaml")]  # composed
    assert resolve_config("cifar10/barlow_twins_vit_small") == [
        str(shipped / "base.yaml"),
        str(shipped / "barlow_twins.yaml"),
        str(shipped / "vit_small.yaml"),
    ]
    assert resolve_config("linear/digits") == [str(ROOT / "configs" / "linear" / "digits.yaml")]  # no base there
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert resolve_config("mine.yaml") == ["mine.yaml"]  # a file that exists wins
    assert resolve_config("{seed_everything: 1}") == ["{seed_everything: 1}"]  # inline YAML passes through
    for part in ("cifar10/base", "cifar10/vit_small", "cifar10/vit_small_intl"):
        assert part not in shipped_config_names()
    parser = command_parser("test", "a name in every --config form, through the parser's own action")
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_argument("--k", type=int, default=0)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text("k: 5\n")  # a local file of that path wins
    for args in (["--config=linear/digits"], ["-c", "linear/digits"], ["--config", "configs/linear/digits.yaml"]):
        with pytest.raises(SystemExit):  # the shipped linear/digits.yaml was read: this parser lacks its keys
            parser.parse_args(args)
        error = capsys.readouterr().err
        assert "data.init_args.batch_size" in error and "no such file" not in error, error
    config = parser.parse_args(["--config=configs/quickstart.yaml", "-c", "mine.yaml"])  # repeated: in order
    assert (config.k, config.seed_everything) == (5, 1)
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

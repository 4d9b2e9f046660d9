"""Every per-dataset config parses, builds its model and trains one step on data of its real
format and image size (tiny overrides: narrow backbone and heads, small batch, one device)."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from spectral_ssl.cli import pretrain
from test_formats import write_cifar, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
PRETRAINING = [c for c in CONFIGS if c.parent.name != "linear"]


def test_configs_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("write_configs", ROOT / "tools" / "write_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.all_configs()
    assert {ROOT / p for p in generated} == set(PRETRAINING)
    for path, text in generated.items():
        assert (ROOT / path).read_text() == text, f"{path} differs: run python tools/write_configs.py"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_cifar(root / "cifar10", 10, per_batch=4)
    write_cifar(root / "cifar100", 100, per_batch=20)
    write_image_folder(root / "folder", corrupt=False, per_class=6)
    return root


def tiny_overrides(config: dict, data_root: Path) -> list[str]:
    model = config["model"]["init_args"]
    method = config["model"]["class_path"].rsplit(".", 1)[1]
    args = ["--model.init_args.backbone.width=4", "--data.init_args.num_workers=0", "--trainer.devices=1",
            "--trainer.strategy=auto", "--trainer.sync_batchnorm=false", "--trainer.precision=32-true",
            "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false", "--knn.every_n_epochs=1", "--spectrum.every_n_epochs=1",
            "--data.init_args.batch_size=12"]
    dims = [16] * (len(model["projector_dims"]) - 1) + [8 if method == "WMSE" else 16]
    args.append(f"--model.init_args.projector_dims={dims}")
    if method == "WMSE":
        args.append("--model.init_args.w_size=12")
    if method == "BYOL":
        args.append("--model.init_args.predictor_hidden_dims=[16]")
    if "trace_weight" not in model and method == "INTL":
        args.append("--model.init_args.trace_weight=0.05")  # the rule needs a batch > 8
    data = config["data"]
    if data["class_path"].endswith("CIFARDataModule"):
        args.append(f"--data.init_args.root={data_root / ('cifar' + str(data['init_args']['num_classes']))}")
    else:
        args.append(f"--data.init_args.root={data_root / 'folder'}")
    return args


@pytest.mark.parametrize("config", PRETRAINING, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_and_trains_one_step(config, datasets, tmp_path):
    parsed = yaml.safe_load(config.read_text())
    assert "Source:" in config.read_text().split("run_name")[0]
    cli = pretrain(["--config", str(config), *tiny_overrides(parsed, datasets), "--output_dir", str(tmp_path)])
    assert cli.trainer.global_step == 1
    model = cli.model
    assert type(model).__name__ == parsed["model"]["class_path"].rsplit(".", 1)[1]
    views = parsed["data"]["init_args"]["augment"]
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert [v.shape[-1] for v in batch[0]] == [v["size"] for v in views]  # multi-crop sizes as configured
    assert (tmp_path / parsed["run_name"] / "checkpoints" / "last.ckpt").exists()

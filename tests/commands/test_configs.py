"""Every per-dataset config parses, builds its model and trains one step on data of its real
format and image size (tiny overrides: narrow backbone and heads, small batch, one device)."""

from pathlib import Path

import pytest
import torch
import yaml

from spectral_ssl.commands import main, pretrain
from spectral_ssl.commands.common import resolve_config, shipped_config_names
from spectral_ssl.data.synthetic import write_cifar_folder, write_idx_folder, write_image_folder

ROOT = Path(__file__).resolve().parents[2]
EVALUATION = ("linear/", "linear_fast/", "knn/", "finetune/")  # the evaluation commands' configs
PRETRAINING = [n for n in shipped_config_names() if "/" in n and not n.startswith(EVALUATION)]
QUICK_STARTS = ["quickstart", "quickstart_vit"]
# A training step for every method on each dataset's ResNet, every method with ViT-S on CIFAR-10,
# and ViT-S with INTL elsewhere: a method's file is the same with either backbone (vit_small.yaml
# replaces backbone and optimizer alone), and CIFAR-100's files are CIFAR-10's but for the class
# count (test_cifar100_is_cifar10_with_100_classes). Every config is parsed and checked below.
TRAINED = [
    n
    for n in PRETRAINING
    if not n.startswith("cifar100/") or n in ("cifar100/intl", "cifar100/intl_vit_small")
    if not n.endswith("_vit_small") or n.startswith("cifar10/") or "/intl" in n
]  # and every fashion_mnist config, the CPU variants included


def merged(*layers: dict) -> dict:
    """Mappings merged key by key, later layers winning, lists replaced: what repeated --config does."""
    result: dict = {}
    for layer in layers:
        for key, value in layer.items():
            both = isinstance(value, dict) and isinstance(result.get(key), dict)
            result[key] = merged(result[key], value) if both else value
    return result


def composed(name: str) -> dict:
    return merged(*(yaml.safe_load(Path(part).read_text()) for part in resolve_config(name)))


def test_the_shipped_configs_are_a_base_per_dataset_and_a_file_per_method():
    """72 pretraining configs from 5 bases, 22 method files, 4 ViT variants and Fashion-MNIST's CPU
    variant; every method file names the source of its values, and none repeats what its base holds."""
    assert len(PRETRAINING) == 72
    assert sum(n.startswith("fashion_mnist/") for n in PRETRAINING) == 14  # 7 methods, each also _cpu
    for dataset in ("cifar10", "cifar100", "imagenet100", "imagenet", "fashion_mnist"):
        folder = ROOT / "configs" / dataset
        base = yaml.safe_load((folder / "base.yaml").read_text())
        assert {"trainer", "data", "knn", "spectrum", "online_probe"} <= set(base) and "model" not in base
        for method in folder.glob("*.yaml"):
            if method.stem == "base":
                continue
            comments = [line for line in method.read_text().splitlines() if line.startswith("#")]
            assert any("Source" in line for line in comments), method
            layer = yaml.safe_load(method.read_text())
            if method.stem != "cpu":  # the CPU variant sets the monitors' cadence for its short runs
                assert not set(layer) & {"knn", "spectrum", "online_probe", "seed_everything"}, method
            assert layer["model"]["init_args"]["optimizer"], method


def test_a_composed_config_is_named_after_itself_unless_told(tmp_path, capsys):
    for args, run_name in (
        (["--config", "cifar10/intl_vit_small"], "cifar10_intl_vit_small"),
        (["--config", "imagenet/intl_multicrop"], "imagenet_intl_multicrop"),
        (["--config", "./cifar10/intl"], "cifar10_intl"),
        (["--config", "cifar10/intl", "--run_name", "mine"], "mine"),
        (["--run_name", "mine", "--config", "cifar10/intl"], "mine"),
        (["--config", "quickstart"], "quickstart"),  # its file names it
    ):
        with pytest.raises(SystemExit):
            pretrain([*args, "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["run_name"] == run_name


def test_a_copied_method_file_needs_its_base(tmp_path, capsys):
    """A copy of a method file alone names no dataset: refused (it would train on the digits);
    with its base before it, it is the shipped config."""
    mine = tmp_path / "my_intl.yaml"
    mine.write_text((ROOT / "configs" / "cifar10" / "intl.yaml").read_text())
    with pytest.raises(SystemExit, match="^error: --config .*my_intl.yaml sets data.init_args but names no datamodule"):
        pretrain(["--config", str(mine), "--print_config"])
    printed = []
    for args in (["--config", "cifar10/base", "--config", str(mine)], ["--config", "cifar10/intl"]):
        with pytest.raises(SystemExit):
            pretrain([*args, "--run_name", "same", "--print_config"])
        printed.append(yaml.safe_load(capsys.readouterr().out))
    assert printed[0] == printed[1]
    with pytest.raises(FileNotFoundError, match="no such file, nor a shipped config"):
        resolve_config(str(tmp_path / "nowhere.yaml"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_cifar_folder(root / "cifar10", train_images=20, test_images=4)
    write_cifar_folder(root / "cifar100", train_images=20, test_images=20, num_classes=100)
    write_image_folder(root / "folder", corrupt=False, per_class=6)
    write_idx_folder(root / "fashion", train_images=24, test_images=12, gzipped=True)  # Debian's flat layout
    return root


def tiny_overrides(config: dict, data_root: Path) -> list[str]:  # config: the composed mapping
    model = config["model"]["init_args"]
    method = config["model"]["class_path"].rsplit(".", 1)[1]
    args = [
        "--model.init_args.backbone.width=4",
        "--data.init_args.num_workers=0",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.sync_batchnorm=false",
        "--trainer.precision=32-true",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.max_steps=1",
        "--trainer.enable_progress_bar=false",
        "--knn.every_n_epochs=1",
        "--spectrum.every_n_epochs=1",
        "--spectrum.embedding_map=pca",  # the map's path for every config, without t-SNE's seconds (tested elsewhere)
        "--online_probe.every_n_epochs=1",
        "--knn.k=5",
        "--data.init_args.batch_size=12",
    ]
    if model["backbone"]["name"].startswith("vit"):  # one narrow block: the patch size and image size stay
        args += ["--model.init_args.backbone.depth=1", "--model.init_args.backbone.embed_dim=24"]
        args.append("--model.init_args.backbone.num_heads=2")
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
    elif data["class_path"].endswith("MNISTDataModule"):
        args.append(f"--data.init_args.root={data_root / 'fashion'}")
    else:
        args.append(f"--data.init_args.root={data_root if (data_root / 'train').is_dir() else data_root / 'folder'}")
    return args


@pytest.mark.parametrize("config", PRETRAINING + QUICK_STARTS)
def test_every_config_states_its_monitor_budgets(config):
    parsed = composed(config)
    assert parsed["knn"]["max_bank"] >= 1 and parsed["knn"]["max_queries"] >= 1
    assert parsed["spectrum"]["max_images"] >= 1 and parsed["online_probe"]["max_images"] >= 1
    if config.startswith("imagenet"):  # bounded well below the dataset: at most 100 bank images a class
        assert parsed["knn"]["max_bank"] <= 100_000 and parsed["knn"]["max_queries"] <= 10_000
    widest = max(parsed["model"]["init_args"].get("projector_dims", [0]))
    assert parsed["spectrum"]["max_images"] > widest  # the spectrum sees more images than dimensions


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["imagenet/intl", "imagenet/intl_multicrop", "imagenet100/intl", "imagenet/intl_multicrop_vit_small"]
)
def test_imagenet_configs_run_steps_with_every_monitor_on_real_size_jpegs(name, tmp_path):
    """A few steps of the shipped ImageNet configs on a synthetic tree of 375 x 500 JPEGs (ImageNet's
    typical size), with the kNN (baselines included), spectrum and online-probe monitors on."""
    parsed = composed(name)
    write_image_folder(tmp_path / "tree", corrupt=False, per_class=8, size=(375, 500), classes=("a", "b", "c"))
    cli = pretrain(
        [
            "--config",
            name,
            *tiny_overrides(parsed, tmp_path / "tree"),
            "--trainer.max_steps=2",
            "--data.init_args.batch_size=8",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert cli.trainer.global_step == 2
    knn = next(c for c in cli.trainer.callbacks if type(c).__name__ == "KNNMonitor")
    assert set(knn.results) == {"raw pixels", "random init", "trained"} and knn.sizes == (24, 24)
    assert "average-pooled from 224x224 to 32x32" in knn.summary()
    logged = cli.trainer.logged_metrics
    assert {"knn/top1", "online/top1", "spectrum/embedding/effective_rank"} <= set(logged)
    index_files = list((tmp_path / name.replace("/", "_")).glob("**/index-*.npz"))
    assert len(index_files) == 2  # the file index, cached in the run folder


@pytest.mark.slow
def test_cifar100_is_cifar10_with_100_classes():
    for name in (n for n in PRETRAINING if n.startswith("cifar10/")):
        ten, hundred = composed(name), composed(name.replace("cifar10/", "cifar100/"))
        assert (ten["data"]["init_args"].pop("num_classes"), hundred["data"]["init_args"].pop("num_classes")) == (
            10,
            100,
        )
        assert ten == hundred, name


@pytest.mark.parametrize("config", TRAINED)
def test_config_builds_and_trains_one_step(config, datasets, tmp_path):
    parsed = composed(config)
    cli = pretrain(["--config", config, *tiny_overrides(parsed, datasets), "--output_dir", str(tmp_path)])
    assert cli.trainer.global_step == 1
    model = cli.model
    assert type(model).__name__ == parsed["model"]["class_path"].rsplit(".", 1)[1]
    written = parsed["data"]["init_args"].get("augment")  # else the datamodule's own recipe
    sizes = [v["size"] for v in written] if written else [r.size for r in cli.datamodule.view_recipes()]
    batch = next(iter(cli.datamodule.train_dataloader()))
    if cli.datamodule.augment_on_device:  # the batch carries indices; the views are made from them on the device
        batch = (cli.datamodule.device_views(batch[0], torch.device("cpu"), epoch=0, batch=0), batch[1])
    assert [v.shape[-1] for v in batch[0]] == sizes  # multi-crop sizes as configured
    assert (tmp_path / config.replace("/", "_") / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("config", PRETRAINING)
def test_config_resolves_to_its_own_datamodule_defaults(config, capsys):
    """No argument leaks from the default digits datamodule into the config's (jsonargparse carries
    same-named init_args over when the class changes: ImageNet got image_size 16, num_workers 0)."""
    import inspect

    from spectral_ssl import data as datamodules

    with pytest.raises(SystemExit):
        pretrain(["--config", config, "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)["data"]
    written = composed(config)["data"]["init_args"]
    cls = getattr(datamodules, resolved["class_path"].rsplit(".", 1)[1])
    defaults = {}  # the base class's options, then the dataset's own (those it passes on as **kwargs are the base's)
    for klass in reversed(cls.__mro__):
        if issubclass(klass, datamodules.SSLDataModule) and "__init__" in vars(klass):
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                    defaults[name] = parameter.default
    assert {"batch_size", "num_workers", "seed", "label_fraction"} <= set(defaults)
    for name, default in defaults.items():
        if name not in ("self", "augment", "mean", "std") and name not in written:
            assert resolved["init_args"][name] == default, name


def test_the_vit_quick_start_config_runs(tmp_path):
    """configs/quickstart_vit.yaml by name, cut to one block and two steps: a ViT-Tiny on the
    digits' 16 px in patches of 4, AdamW, the monitors on."""
    cli = main(
        [
            "pretrain",
            "--config=quickstart_vit",
            "--model.backbone.depth=1",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--output_dir",
            str(tmp_path),
        ]
    )
    backbone = cli.model.backbone
    assert type(backbone).__name__ == "VisionTransformer" and backbone.patch_embed.grid_size == (4, 4)
    assert type(cli.model.optimizers().optimizer).__name__ == "AdamW" and cli.trainer.global_step == 2
    assert (tmp_path / "quickstart_vit" / "checkpoints" / "last.ckpt").exists()

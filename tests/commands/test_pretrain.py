"""The quick-start path end to end, through the command users run."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faults import ENV, at_batch
from spectral_ssl.commands import main
from spectral_ssl.methods import INTL

ROOT = Path(__file__).resolve().parents[2]


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_quickstart_learns_logs_and_checkpoints(tmp_path, capsys, caplog, tiny, trained_against_initial):
    with caplog.at_level("INFO"):
        cli = main(["pretrain", *tiny, "--output_dir", str(tmp_path), "--run_name", "tiny", "--trainer.max_epochs=3",
                    "--trainer.enable_progress_bar=true"])  # fmt: skip
    run = tmp_path / "tiny"
    assert "trainable=all: 184,136 of 184,136 parameters train" in caplog.text  # a log line: shown beside the bar
    assert len(scalars(run, "train/loss")) == 3 * (1437 // 64)
    trained, initial = trained_against_initial(cli)  # the loss decreases, on the same batches
    assert trained < 0.95 * initial
    assert len(scalars(run, "knn/top1")) == 3
    summary = capsys.readouterr().out
    for name in ("raw pixels", "random init", "trained"):
        assert name in summary

    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # no pickled objects inside
    assert checkpoint["epoch"] == 2
    model = INTL.load_from_checkpoint(last, weights_only=True)
    assert model.backbone.num_features == 64
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][key])
    assert (run / "config.yaml").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, pretrain, tiny):
    """SIGKILL a real run mid-training, run the same command again: the result equals an
    uninterrupted run bit for bit (the view stream depends only on seed and epoch). Loader workers
    on: their prefetching once drew the resumed epoch in epoch 0's order."""
    straight = pretrain(tmp_path / "straight", "--trainer.max_epochs=2", "--data.num_workers=2")
    expected = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-c",
        "from spectral_ssl.commands import main; main()",
        "pretrain",
        *tiny,
        "--trainer.max_epochs=2",
        "--data.num_workers=2",
        "--output_dir",
        str(out),
        "--run_name",
        "tiny",
        at_batch(1, 5, "SIGKILL"),  # before the 6th batch of the second epoch: last.ckpt is epoch 0's
    ]
    killed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(out / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    resumed = pretrain(out, "--trainer.max_epochs=2", "--data.num_workers=2")
    state = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key


def test_top_level_help_lists_every_command_and_an_unknown_one_is_an_error(capsys):
    from spectral_ssl.commands import COMMANDS

    main(["--help"])
    printed = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in printed, name
    with pytest.raises(SystemExit, match=r"^error: unknown command 'pretrian'; choose one of pretrain, "):
        main(["pretrian"])


@pytest.mark.parametrize("command", ["pretrain", "supervised", "linear", "knn", "spectrum", "linear-fast"])
def test_the_default_dataset_never_carries_its_settings_into_a_dataset_named(command, tmp_path, capsys):
    """The digits (the default) have image_size 16 and num_workers 0: an ImageFolder named on
    the command line keeps its own 224 and the base class's workers (one per core, at most 8), and
    without a class named the digits take the options; the model's default (INTL) likewise takes
    ``--model.backbone.width`` alone."""
    import yaml

    from spectral_ssl.data.base import DEFAULT_WORKERS

    checkpoint = [] if command in ("pretrain", "supervised") else [str(tmp_path / "any.ckpt")]
    folder = ["--data=spectral_ssl.data.ImageFolderDataModule", f"--data.root={tmp_path}"]
    for args, expected in (
        (folder, ("spectral_ssl.data.ImageFolderDataModule", 224, DEFAULT_WORKERS)),
        (["--data.batch_size=64"], ("spectral_ssl.data.DigitsDataModule", 16, 0)),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([command, *checkpoint, *args, "--print_config"])
        assert exit_info.value.code == 0
        data = yaml.safe_load(capsys.readouterr().out)["data"]
        assert (data["class_path"], data["init_args"]["image_size"], data["init_args"]["num_workers"]) == expected
    if command == "pretrain":
        with pytest.raises(SystemExit):
            main([command, "--model.backbone.width=8", "--data.batch_size=64", "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] == "spectral_ssl.methods.INTL"
        assert (
            printed["model"]["init_args"]["backbone"]["width"] == 8 and printed["data"]["init_args"]["batch_size"] == 64
        )


def test_help_print_config_and_wrong_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    assert "--print_config" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "run_name: quickstart" in printed and "spectral_ssl.methods.INTL" in printed

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.backbone.widht=3"])
    assert exit_info.value.code != 0
    assert "widht" in capsys.readouterr().err

    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "quickstart.yaml").read_text().replace("batch_size:", "batchsize:"))
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "Option 'batchsize' is not accepted" in capsys.readouterr().err


def test_nan_loss_is_a_clear_error():
    model = INTL(backbone={"name": "resnet18", "cifar_stem": True, "width": 8}, projector_dims=[32, 32])
    views = [torch.full((16, 3, 16, 16), float("nan")), torch.randn(16, 3, 16, 16)]
    with pytest.raises(FloatingPointError, match="last checkpoint is intact"):
        model.training_step((views, torch.zeros(16)), 0)


def test_callbacks_given_on_the_command_line_are_kept_beside_ours(tmp_path, tiny):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from spectral_ssl.data import SkippedImagesReport

    cli = main(["pretrain", *tiny, "--output_dir", str(tmp_path), "--trainer.max_steps=1", "--knn.every_n_epochs=0",
                "--trainer.callbacks+=LearningRateMonitor"])  # fmt: skip
    kinds = {type(callback) for callback in cli.trainer.callbacks}
    assert {LearningRateMonitor, SkippedImagesReport} <= kinds


MULTI_CROP_32_16 = "--data.augment=[{size: 32}, {size: 32}, {size: 16}, {size: 16}]"


def test_a_timm_vit_trains_on_every_crop_size_of_a_multi_crop_recipe(tmp_path):
    """``timm:vit_tiny_patch16_224`` at 32 px with crops of 32, 32, 16, 16 px raised
    ``Input height (16) doesn't match model (32)`` in the first step; now it trains, as the
    built-in ViT does, and a size it cannot take is one ``error:`` line at start, nothing saved."""
    from spectral_ssl.data.synthetic import write_cifar_folder

    write_cifar_folder(tmp_path / "data", train_images=40, test_images=10)
    data = ["--data=spectral_ssl.data.CIFARDataModule", f"--data.root={tmp_path / 'data'}", "--data.num_workers=0"]
    run = [
        "pretrain", "--config", str(ROOT / "configs" / "quickstart.yaml"), *data, "--data.batch_size=16",
        "--trainer.max_steps=2", "--trainer.max_epochs=-1", "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0",
        "--trainer.enable_progress_bar=false", "--output_dir", str(tmp_path / "runs"), MULTI_CROP_32_16,
    ]  # fmt: skip
    cli = main([*run, "--model.backbone.name=timm:vit_tiny_patch16_224", "--run_name", "timm"])
    assert cli.trainer.global_step == 2 and cli.model.hparams["backbone"]["view_sizes"] == (32, 16)
    with pytest.raises(SystemExit, match=r"error: backbone vit_tiny cannot take 12x12 images .*32, 12 px.*patch"):
        main([*run, "--model.backbone.name=vit_tiny", "--model.backbone.patch_size=8", "--run_name", "bad",
              "--data.augment=[{size: 32}, {size: 12}]"])  # fmt: skip
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("augment_on_device", [False, True])
def test_bf16_true_trains_with_iternorm_and_every_monitor(tmp_path, tiny, augment_on_device):
    """``--trainer.precision=bf16-true --model.backbone.norm=iternorm`` raised ``expected dtype
    BFloat16 for end but got float`` in the first step (IterNorm's running statistics), and the
    monitors and device views fed float32 images to the bf16 model. Now it trains, monitors on."""
    cli = main(
        ["pretrain", *tiny, "--output_dir", str(tmp_path), "--trainer.precision=bf16-true",
         "--model.backbone.norm=iternorm", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
         "--spectrum.every_n_epochs=1", f"--data.augment_on_device={str(augment_on_device).lower()}"]
    )  # fmt: skip
    norm = cli.model.backbone.bn1
    assert norm.running_wm.dtype == torch.bfloat16 and cli.trainer.global_step == 3
    assert torch.isfinite(norm.running_wm.float()).all()
    assert (
        "trained"
        in cli.callback(type(next(c for c in cli.trainer.callbacks if type(c).__name__ == "KNNMonitor"))).summary()
    )

"""User mistakes and damaged inputs: one clear line naming the problem and the fix (exit 1, no
traceback), and nothing silently different."""

import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from spectral_ssl.commands import main
from spectral_ssl.data import ImageFolderDataModule
from spectral_ssl.data.synthetic import write_image_folder


@pytest.fixture(scope="module")
def one_step(tiny):
    return [*tiny, "--trainer.max_steps=1", "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0"]


@pytest.mark.parametrize("flag", ["--trainer.max_epoch=3", "--run_n=x", "--res=false"])
def test_option_abbreviations_are_refused(flag, tmp_path, capsys, one_step):
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", *one_step, "--output_dir", str(tmp_path), flag])
    assert exit.value.code == 2 and flag.split("=")[0][2:] in capsys.readouterr().err


@pytest.mark.parametrize(
    "batch, message",
    [
        (2000, r"data.batch_size=2000 is larger than the 1437 training images"),
        (1, r"data.batch_size=1: the projector's BatchNorm and the whitening need at least 2"),
    ],
)
def test_a_batch_size_that_cannot_train_is_refused_before_training(batch, message, tmp_path, one_step):
    with pytest.raises(SystemExit, match=f"error: {message}"):
        main(["pretrain", *one_step, "--output_dir", str(tmp_path), f"--data.batch_size={batch}"])
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_too_few_classes_for_the_labels_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"10 classes but model.num_classes=5: set --model.num_classes=10"):
        main(
            [
                "supervised",
                "--config",
                "configs/supervised_digits.yaml",
                "--model.backbone.width=4",
                "--trainer.max_steps=1",
                "--trainer.enable_progress_bar=false",
                "--model.num_classes=5",
                "--output_dir",
                str(tmp_path),
            ]
        )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, pretrain):
    run = pretrain(tmp_path_factory.mktemp("run"), "--trainer.max_steps=1", "--knn.every_n_epochs=0")
    return run / "checkpoints" / "last.ckpt"


def test_evaluating_non_finite_weights_is_refused(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k in state["state_dict"] if k.startswith("backbone.") and k.endswith("weight"))
    state["state_dict"][name][0] = float("nan")
    broken = tmp_path / "diverged.ckpt"
    torch.save(state, broken)
    with pytest.raises(SystemExit, match=rf"diverged.ckpt: {name[len('backbone.') :]} holds NaN"):
        main(["knn", str(broken), "--k=[5]"])


def test_random_bytes_as_safetensors_are_a_clear_error(tmp_path):
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SystemExit, match="backbone.safetensors is not a readable safetensors file"):
        main(["knn", str(path), "--k=[5]"])


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path):
    write_image_folder(tmp_path, corrupt=False)
    values = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(values).save(tmp_path / "val" / "cat" / "deep.png")
    data = ImageFolderDataModule(root=str(tmp_path), num_workers=0)
    data.setup()
    index = [data.samples["test"][i][0] for i in range(len(data.samples["test"]))].index(
        str(tmp_path / "val" / "cat" / "deep.png")
    )
    image, _ = data.dataset("test", None)[index]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert image[:, 0, 8].tolist() == [100] * 3 and image[:, 8, 0].tolist() == [255] * 3
    assert image[:, 8, 8].tolist() == [7] * 3


def test_an_empty_class_folder_is_named(tmp_path, caplog):
    write_image_folder(tmp_path, corrupt=False)
    (tmp_path / "train" / "zebra").mkdir()
    (tmp_path / "val" / "zebra").mkdir()
    with caplog.at_level(logging.WARNING):
        ImageFolderDataModule(root=str(tmp_path), num_workers=0).setup()
    assert "hold no image" in caplog.text and "zebra" in caplog.text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model.backbone.name=resnet19"], r"unknown backbone 'resnet19'; choose one of resnet18"),
        (
            ["--model.backbone.norm=pln", "--model.backbone.norm_options.pln_group_size=5"],
            r"ParallelLayerNorm: groups of 5 channels do not divide",
        ),
    ],
)
def test_a_models_own_error_at_construction_is_its_one_line(flags, message, tmp_path, one_step):
    """A ValueError the model raises while jsonargparse builds it came wrapped in "Does not validate
    against any of the Union subtypes" and the whole parsed namespace: the model's own line now."""
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", *one_step, "--output_dir", str(tmp_path), *flags])
    reported = str(exit.value.code)
    assert reported.startswith("error: ") and "\n" not in reported and "Union subtypes" not in reported
    assert re.search(message, reported), reported

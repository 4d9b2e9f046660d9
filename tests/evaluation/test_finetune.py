"""Fine-tuning (``spectral-ssl finetune``) and the label subsets it trains on, end to end on a
quick-start checkpoint: the shipped configs on the digits and on CIFAR-format data, the backbone
trained in train mode (linear evaluation's stays frozen), a run killed and resumed, starting from a
weights file instead of a checkpoint, and the subsets' choice of images."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faults import ENV, at_batch
from spectral_ssl.checkpoints import load_encoder
from spectral_ssl.commands import main
from spectral_ssl.data import DigitsDataModule, ImageFolderDataModule, stratified_fraction
from spectral_ssl.data.synthetic import write_cifar_folder, write_idx_folder, write_image_folder

ROOT = Path(__file__).resolve().parents[2]
FAST_RUN = ["--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]


@pytest.fixture
def checkpoint(quickstart_checkpoint):
    return quickstart_checkpoint


# --- the label subsets ------------------------------------------------------------------------
def test_label_fraction_takes_k_per_class_and_the_same_images_for_the_same_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 7)
    chosen = stratified_fraction(labels, 0.1, seed=3)
    assert torch.bincount(labels[chosen]).tolist() == [5, 3, 1]  # round(0.1 n), at least one
    assert torch.equal(chosen, stratified_fraction(labels, 0.1, seed=3))
    assert not torch.equal(chosen, stratified_fraction(labels, 0.1, seed=4))
    assert torch.equal(chosen, torch.sort(chosen).values) and len(set(chosen.tolist())) == len(chosen)
    assert set(stratified_fraction(labels, 0.04, seed=3).tolist()) <= set(chosen.tolist())  # nested
    assert torch.equal(stratified_fraction(labels, 1.0), torch.arange(len(labels)))
    for wrong in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="in \\(0, 1\\]"):
            stratified_fraction(labels, wrong)


def test_the_datamodules_train_on_their_label_subset(tmp_path):
    data = DigitsDataModule(label_fraction=0.1)
    data.setup("fit")
    subset, labels = data.labelled_indices(), data.labels("train")
    expected = [int(count * 0.1 + 0.5) for count in torch.bincount(labels).tolist()]  # 10% of each class, rounded
    assert torch.bincount(labels[subset]).tolist() == expected
    bank, _ = data.knn_dataloaders()
    assert len(bank.dataset) == len(subset)  # the kNN bank and every classifier: the labelled images only

    root = tmp_path / "folder"
    write_image_folder(root, corrupt=False)
    for image in (root / "train").rglob("*.JPEG"):  # ImageNet's naming: <class>_<number>.JPEG, unique
        image.rename(image.with_name(f"{image.parent.name}_{image.name}"))
    (root / "train" / "dog" / "dog_1.JPEG").rename(root / "train" / "dog" / "cat_1.JPEG")  # one name in two classes

    def subset(*lines: str) -> ImageFolderDataModule:
        names = tmp_path / "subset.txt"
        names.write_text("\n".join(lines) + "\n\n")
        folder = ImageFolderDataModule(root=str(root), image_size=32, eval_resize=36, num_workers=0,
                                       label_subset=str(names))  # fmt: skip
        folder.setup("fit")
        return folder

    folder = subset("dog_2.JPEG", "cat/cat_1.JPEG", "dog/cat_1.JPEG")  # file names as the official lists give them
    relative = folder.image_names("train")
    assert [relative[i] for i in folder.labelled_indices()] == ["cat/cat_1.JPEG", "dog/cat_1.JPEG", "dog/dog_2.JPEG"]
    with pytest.raises(ValueError, match="3 name.* not in the training split: n0_missing.JPEG, x.JPEG, cat_1.JPEG "
                                         "\\(1 of them the file name of several images"):  # fmt: skip
        subset("n0_missing.JPEG", "dog_2.JPEG", "x.JPEG", "cat_1.JPEG").labelled_indices()
    names = tmp_path / "subset.txt"
    with pytest.raises(ValueError, match="one of data.label_fraction and data.label_subset"):
        both = DigitsDataModule(label_fraction=0.1, label_subset=str(names))
        both.setup("fit")
        both.labelled_indices()


def test_an_unknown_subset_name_is_one_error_line(checkpoint, tmp_path):
    names = tmp_path / "subset.txt"
    names.write_text("3\n99999\n")  # the digits' images are named by their index in the split
    with pytest.raises(SystemExit, match=r"^error: 1 name\(s\) in .*subset.txt \(data.label_subset\) .*: 99999;"):
        main(["finetune", str(checkpoint), "--config", "finetune/digits_10pct", "--data.init_args.label_fraction=null",
              f"--data.init_args.label_subset={names}", "--output_dir", str(tmp_path), *FAST_RUN])  # fmt: skip


# --- fine-tuning ------------------------------------------------------------------------------
def finetune(checkpoint, out, *args):
    return main(["finetune", str(checkpoint), "--config", "finetune/digits_10pct", "--output_dir", str(out), *FAST_RUN,
                 *args])  # fmt: skip


def test_finetuning_on_10_percent_beats_a_linear_head_on_the_same_10_percent(checkpoint, tmp_path):
    """The shipped digits config: backbone and head on 144 labelled digits, against the linear
    protocol on the same 144 (its config, the same epochs); the backbone moved, the frozen one did not."""
    tuned = finetune(checkpoint, tmp_path)
    linear = main(["linear", str(checkpoint), "--config", "linear/digits", "--data.init_args.label_fraction=0.1",
                   "--data.init_args.batch_size=32", "--model.schedule=cosine", "--trainer.max_epochs=60",
                   "--output_dir", str(tmp_path),
                   *FAST_RUN])  # fmt: skip
    assert tuned.metrics["linear/top1"] > linear.metrics["linear/top1"] + 0.05  # measured: 82.22 against 66.67%
    start = load_encoder(checkpoint)[0].state_dict()
    for model, moved in ((tuned.model, True), (linear.model, False)):
        changed = any(not torch.equal(v.cpu(), start[k]) for k, v in model.backbone.state_dict().items())
        assert changed == moved


def test_a_killed_finetuning_resumes_to_the_uninterrupted_weights(checkpoint, tmp_path):
    """SIGKILLed in its third epoch, the same command run again resumes from the second's checkpoint
    (the backbone's weights and BatchNorm statistics are in it) and ends where the uninterrupted
    run ends."""
    whole = finetune(checkpoint, tmp_path / "whole", "--trainer.max_epochs=4")
    args = ["finetune", str(checkpoint), "--config", "finetune/digits_10pct", "--trainer.max_epochs=4",
            "--output_dir", str(tmp_path / "parts"), *FAST_RUN]  # fmt: skip
    command = [sys.executable, "-c", "from spectral_ssl.commands import main; main()", *args, at_batch(2, 2)]
    killed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = main(args)
    assert resumed.trainer.current_epoch == 4 and resumed.metrics == whole.metrics
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_weights_instead_of_a_checkpoint_give_the_same_run(checkpoint, tmp_path):
    """``--model.backbone.weights`` of the checkpoint's torchvision export (its architecture given)
    trains exactly as the checkpoint itself, for fine-tuning and for linear evaluation."""
    main(["export", str(checkpoint), "--formats", "torchvision", "--out", str(tmp_path / "export")])
    (weights,) = (tmp_path / "export").glob("*.pth")
    architecture = ["--model.backbone.name=resnet18", "--model.backbone.cifar_stem=true", "--model.backbone.width=8"]
    for command in ("finetune", "linear"):
        args = [command, "--config", "finetune/digits_10pct" if command == "finetune" else "linear/digits",
                "--trainer.max_epochs=2", "--output_dir", str(tmp_path / command), *FAST_RUN]  # fmt: skip
        from_checkpoint = main([*args, str(checkpoint)])
        from_weights = main([*args, *architecture, f"--model.backbone.weights={weights}", "--run_name=weights"])
        assert from_weights.metrics == from_checkpoint.metrics


@pytest.mark.parametrize(
    "name", ["digits_10pct", "cifar10_10pct", "fashion_mnist_1pct", "imagenet_1pct", "imagenet_10pct", "imagenet"]
)
def test_finetune_configs_run(checkpoint, tmp_path, name):
    """Each fine-tuning config runs a step on tiny data of its real format (one CPU device)."""
    root = tmp_path / "data"
    args = []
    if "cifar" in name:
        write_cifar_folder(root, 40, 10, num_classes=10)
        args = [f"--data.init_args.root={root}", "--other_data=true"]
    elif "fashion" in name:
        write_idx_folder(root, train_images=400, test_images=20, gzipped=True)
        args = [f"--data.init_args.root={root}", "--other_data=true", "--data.init_args.label_fraction=0.1"]
    elif "imagenet" in name:
        write_image_folder(root, corrupt=False)
        args = [f"--data.init_args.root={root}", "--other_data=true"]
        if "pct" in name:  # the official lists name ImageNet's files; here two of the tree's own
            names = sorted(str(p.relative_to(root / "train")) for p in (root / "train").rglob("*.*"))[:2]
            (tmp_path / "subset.txt").write_text("\n".join(names) + "\n")
            args.append(f"--data.init_args.label_subset={tmp_path / 'subset.txt'}")
    args += [] if name.startswith("digits") else ["--data.init_args.num_workers=0"]
    cli = main(["finetune", str(checkpoint), "--config", f"finetune/{name}", *args, "--data.init_args.batch_size=2",
                "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
                "--trainer.accelerator=cpu", "--trainer.max_steps=1", "--output_dir", str(tmp_path),
                *FAST_RUN])  # fmt: skip
    assert cli.trainer.global_step == 1 and 0 <= cli.metrics["linear/top1"] <= 1


def test_the_cosine_gives_each_group_its_closed_form_lr_every_epoch(checkpoint):
    """``schedule="cosine"``: at epoch e of E each group's lr is base x batch / 256 x
    0.5 (1 + cos(pi e / E)) (the official ``adjust_learning_rate``), the classifier's and the
    backbone's, read from the optimizer as each epoch starts."""
    import math

    import lightning as L

    from spectral_ssl.data import LinearEvaluationData
    from spectral_ssl.evaluation import LinearClassifier

    seen = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    model = LinearClassifier(str(checkpoint), lr=0.5, backbone_lr=0.1, schedule="cosine", batch_size=32)
    data = LinearEvaluationData(DigitsDataModule(label_fraction=0.1, batch_size=32))
    trainer = L.Trainer(max_epochs=4, callbacks=[Record()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=data)
    expected = [[base * 32 / 256 * 0.5 * (1 + math.cos(math.pi * e / 4)) for base in (0.5, 0.1)] for e in range(4)]
    assert len(seen) == 4
    for got, want in zip(seen, expected):
        assert got == pytest.approx(want, rel=1e-12)

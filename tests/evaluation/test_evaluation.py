"""The evaluation commands end to end on a quick-start checkpoint, on the built-in digits and on
small real CIFAR / ImageFolder instances; evaluation never changes the backbone."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from spectral_ssl.checkpoints import load_encoder
from spectral_ssl.commands import main
from spectral_ssl.data import DigitsDataModule
from spectral_ssl.data.synthetic import write_cifar_folder, write_image_folder
from spectral_ssl.evaluation import KNNMonitor, extract_features, knn_accuracy

ROOT = Path(__file__).resolve().parents[2]
FAST_RUN = ["--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]


@pytest.fixture
def checkpoint(quickstart_checkpoint):
    return quickstart_checkpoint


def digits() -> DigitsDataModule:
    """The digits, set up as a Trainer would before reading them."""
    data = DigitsDataModule()
    data.setup("validate")
    return data


def test_pretraining_logs_online_probe_and_spectrum(checkpoint):
    events = EventAccumulator(str(checkpoint.parents[1]), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "online/top1",
        "online/train_top1",
        "knn/top1_5nn_l2",
        "spectrum/embedding/effective_rank",
        "spectrum/backbone/rankme",
        "spectrum/backbone/condition_number",
    ):
        assert tag in tags["scalars"], tag
    assert "spectrum" in tags["images"] and "embedding_map" in tags["images"]
    assert 0.3 < events.Scalars("online/top1")[-1].value <= 1.0  # far above chance (10%) after 44 steps
    for epoch in (0, 1):  # the map at the spectrum's cadence, beside its files: every held-out digit (360)
        with open(checkpoint.parents[1] / "spectrum" / f"epoch={epoch}" / "embedding_map.csv") as f:
            assert len(list(csv.DictReader(f))) == 360


def test_knn_command_equals_the_protocols_computed_directly(checkpoint, capsys):
    results = main(["knn", str(checkpoint)])
    backbone, _ = load_encoder(checkpoint)
    bank_loader, test_loader = digits().knn_dataloaders()
    bank, queries = extract_features(backbone, bank_loader), extract_features(backbone, test_loader)
    assert results["5-NN L2 (INTL)"] == knn_accuracy(
        *bank, *queries, k=5, temperature=None, metric="l2", normalize=False, backend="torch"
    )
    assert results["weighted k=20 T=0.07"] == knn_accuracy(*bank, *queries, k=20, backend="torch")
    assert set(results) == {"weighted k=20 T=0.07", "weighted k=200 T=0.07", "5-NN L2 (INTL)"}
    assert "5-NN L2 (INTL)" in capsys.readouterr().out


def test_embedding_command_maps_every_held_out_image_and_fills_tensorboards_projector(checkpoint, tmp_path):
    """``spectral-ssl embedding --method pca``: one CSV row per held-out image, the coordinates the
    features' first two principal components (computed here with numpy's SVD, up to sign), the map
    in TensorBoard and the features, labels and thumbnails in its projector."""
    path = main(["embedding", str(checkpoint), "--method", "pca", "--out", str(tmp_path)])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    backbone, _ = load_encoder(checkpoint)
    features, labels = extract_features(backbone, digits().knn_dataloaders()[1])
    assert [int(r["label"]) for r in rows] == labels.tolist() and [int(r["index"]) for r in rows] == list(range(360))
    x = features.double().numpy() - features.double().numpy().mean(0)
    expected = x @ np.linalg.svd(x, full_matrices=False)[2][:2].T
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    np.testing.assert_allclose(np.abs(got), np.abs(expected), rtol=1e-6, atol=1e-8 * np.abs(expected).max())
    assert (tmp_path / "embedding_map.png").stat().st_size > 1000
    projector = (tmp_path / "projector_config.pbtxt").read_text()
    assert "metadata.tsv" in projector and "sprite.png" in projector
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert "embedding_map" in events.Tags()["images"]


def test_spectrum_command_writes_png_and_csv_with_the_exact_eigenvalues(checkpoint, tmp_path):
    summaries = main(["spectrum", str(checkpoint), "--out", str(tmp_path)])
    assert (tmp_path / "spectrum.png").stat().st_size > 1000
    with open(tmp_path / "spectrum.csv") as f:
        rows = list(csv.DictReader(f))
    backbone, projector = load_encoder(checkpoint)
    _, test_loader = digits().knn_dataloaders()
    features, _ = extract_features(torch.nn.Sequential(backbone, projector), test_loader)
    expected = np.sort(np.linalg.eigvalsh(np.cov(features.double().numpy().T)))[::-1]
    got = np.array([float(r["embedding"]) for r in rows])
    np.testing.assert_allclose(got, np.clip(expected, 0, None), rtol=1e-6, atol=1e-9 * expected[0])
    assert 1 <= summaries["backbone"]["effective_rank"] <= summaries["backbone"]["dim"]


def test_linear_fast_and_protocol(checkpoint, tmp_path, capsys):
    top1 = main(["linear-fast", str(checkpoint), "--epochs=30"])
    assert 0.7 < top1 <= 1.0
    cli = main(
        [
            "linear",
            str(checkpoint),
            "--trainer.max_epochs=2",
            "--model.lr=0.5",
            "--data.batch_size=64",
            "--model.milestones=[1]",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "linear",
            *FAST_RUN,
        ]
    )
    metrics = cli.metrics
    assert 0.3 < metrics["linear/top1"] <= metrics["linear/top5"] <= 1.0
    assert "linear top-1" in capsys.readouterr().out
    (run,) = (tmp_path / "linear").iterdir()  # keyed by the evaluated checkpoint: <stem>-<sha256 prefix>
    assert run.name.startswith("last-") and (run / "checkpoints" / "last.ckpt").exists()


def test_linear_runs_are_keyed_by_the_evaluated_checkpoint_in_every_form(checkpoint, tmp_path, capsys):
    """The classifier run is keyed by the parsed checkpoint, whichever form gave it: after the
    positional form, ``--model.checkpoint=P``, ``--model.checkpoint P`` and a config file naming P
    resume that run; the file rewritten at the same path (or another checkpoint) gets a new run,
    never the classifier of the old backbone."""
    import shutil

    evaluated = tmp_path / "first.ckpt"
    shutil.copy(checkpoint, evaluated)
    (tmp_path / "mine.yaml").write_text(f"model:\n  checkpoint: {evaluated}\n")
    args = ["--trainer.max_steps=1", "--data.batch_size=64", "--output_dir", str(tmp_path / "runs")]
    args += ["--run_name", "linear", *FAST_RUN]
    runs = tmp_path / "runs" / "linear"
    main(["linear", str(evaluated), *args])
    (run,) = runs.iterdir()
    for form in (
        [f"--model.checkpoint={evaluated}"],
        ["--model.checkpoint", str(evaluated)],
        ["--config", str(tmp_path / "mine.yaml")],
    ):
        capsys.readouterr()
        main(["linear", *form, *args])
        assert f"Resuming from {run / 'checkpoints'}" in capsys.readouterr().err, form
        assert list(runs.iterdir()) == [run], form
    state = torch.load(evaluated, weights_only=True)  # a retrained backbone written over the same path
    state["state_dict"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, evaluated)
    capsys.readouterr()
    main(["linear", "--config", str(tmp_path / "mine.yaml"), *args])
    assert "Resuming" not in capsys.readouterr().err
    assert len(list(runs.iterdir())) == 2 and all(p.name.startswith("first-") for p in runs.iterdir())


def test_linear_takes_one_checkpoint(checkpoint, tmp_path):
    other = tmp_path / "other.ckpt"
    other.write_bytes(Path(checkpoint).read_bytes())
    for args, message in (
        ([str(checkpoint), f"--model.checkpoint={other}"], "two checkpoints to evaluate"),
        ([], "no checkpoint to evaluate: spectral-ssl linear CKPT"),
        ([str(tmp_path / "missing.ckpt")], "no checkpoint .*missing.ckpt to evaluate"),
    ):
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            main(["linear", *args, "--output_dir", str(tmp_path)])


def test_evaluation_leaves_the_backbone_bitwise_unchanged(checkpoint, tmp_path):
    from lightning import Trainer

    from spectral_ssl.data import LinearEvaluationData
    from spectral_ssl.evaluation import LinearClassifier, spectrum_summary

    backbone, _ = load_encoder(checkpoint)
    backbone.train()  # even a backbone left in training mode
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    features, _ = extract_features(backbone, data.knn_dataloaders()[0])  # kNN and spectrum extraction
    spectrum_summary(features)
    model = LinearClassifier(str(checkpoint))
    Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    ).fit(model, datamodule=LinearEvaluationData(data))
    after_linear = model.backbone.state_dict()
    for name, value in before.items():
        assert torch.equal(backbone.state_dict()[name], value), name
        assert torch.equal(after_linear[name], value), name  # running statistics included
    assert backbone.training  # its own flag restored


def test_commands_read_cifar_and_image_folder_formats(checkpoint, tmp_path):
    write_cifar_folder(tmp_path / "cifar", train_images=40, test_images=8)
    results = main(
        [
            "knn",
            str(checkpoint),
            "--data=spectral_ssl.data.CIFARDataModule",
            f"--data.root={tmp_path / 'cifar'}",
            "--data.num_workers=0",
            "--k=[5]",
            "--other_data=true",  # a digits checkpoint: read other formats on purpose
        ]
    )
    assert set(results) == {"weighted k=5 T=0.07", "5-NN L2 (INTL)"}
    write_image_folder(tmp_path / "folder")
    top1 = main(
        [
            "linear-fast",
            str(checkpoint),
            "--epochs=5",
            "--data=spectral_ssl.data.ImageFolderDataModule",
            f"--data.root={tmp_path / 'folder'}",
            "--data.image_size=32",
            "--data.eval_resize=32",
            "--data.num_workers=0",
            "--other_data=true",
        ]
    )
    assert 0.0 <= top1 <= 1.0


def test_missing_dataset_is_a_clear_error(checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="cifar-10-batches-py"):
        main(["knn", str(checkpoint), "--data=spectral_ssl.data.CIFARDataModule", f"--data.root={tmp_path}"])


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "imagenet100", "imagenet"])
def test_linear_configs_run(checkpoint, tmp_path, name):
    """Each linear-evaluation config parses and runs a step (tiny data of its real format, one CPU device)."""
    config = ROOT / "configs" / "linear" / f"{name}.yaml"
    root = tmp_path / "data"
    if "cifar" in name:
        write_cifar_folder(root, 4 * (5 if int(name[5:]) == 10 else 1), 4, num_classes=int(name[5:]))
    elif "imagenet" in name:
        write_image_folder(root, corrupt=False)
    data_root = [] if name == "digits" else [f"--data.init_args.root={root}", "--data.init_args.num_workers=0"]
    data_root += [] if name == "digits" else ["--other_data=true"]  # the protocol's config on a digits checkpoint
    cli = main(
        [
            "linear",
            str(checkpoint),
            "--config",
            str(config),
            *data_root,
            "--data.init_args.batch_size=4",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.precision=32-true",
            "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1",
            "--trainer.max_steps=1",
            "--output_dir",
            str(tmp_path),
            *FAST_RUN,
        ]
    )
    assert cli.trainer.global_step == 1 and 0.0 <= cli.metrics["linear/top1"] <= 1.0


def test_bf16_extraction_is_close_to_fp32(checkpoint):
    backbone, _ = load_encoder(checkpoint)
    loader = digits().knn_dataloaders(batch_size=128)[1]
    full, labels = extract_features(backbone, loader)
    half, same_labels = extract_features(backbone, loader, precision=torch.bfloat16)
    assert half.dtype == torch.float32 and torch.equal(labels, same_labels)
    cosine = torch.nn.functional.cosine_similarity(full, half, dim=1)
    assert cosine.min() > 0.99


def test_console_command_exits_zero_and_prints_only_its_report(checkpoint):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "spectral_ssl", "knn", str(checkpoint), "--k=[20]"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "5-NN L2 (INTL)" in result.stdout and "{" not in result.stdout  # no returned dict echoed


def test_a_csv_logger_run_keeps_config_checkpoints_and_spectra_in_the_run_folder(tmp_path, tiny):
    run = tmp_path / "csv"
    csv_logger = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}", "--trainer.logger.name=csv"]
    args = [*tiny, "--output_dir", str(tmp_path), "--run_name", "csv", "--knn.every_n_epochs=0",
            "--spectrum.every_n_epochs=1", *csv_logger, "--trainer.logger.version=csv"]  # fmt: skip
    main(["pretrain", *args, "--trainer.max_epochs=2"])
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "csv" / "metrics.csv").is_file()  # the logger's own files: where it was told
    for epoch in (0, 1):
        with open(run / "spectrum" / f"epoch={epoch}" / "spectrum.csv") as f:
            rows = csv.reader(f)
            header, first = next(rows), next(rows)
        assert header == ["index", "backbone", "embedding"] and float(first[1]) > 0
        assert (run / "spectrum" / f"epoch={epoch}" / "spectrum.png").stat().st_size > 1000
    main(["pretrain", *args, "--trainer.max_epochs=3"])  # the same command, one more epoch: resumed by its config
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_counts_are_of_the_images_used_not_of_the_files_listed(checkpoint, tmp_path, capsys):
    """An ImageFolder of 60 training files of which 2 are unreadable: the knn command and the kNN
    monitor count the 58 images in the features, and the spectrum command the images it read."""
    root = tmp_path / "folder"
    write_image_folder(root, per_class=29, size=(36, 36))  # 58 images and train/dog/broken.JPEG
    (root / "train" / "cat" / "broken.JPEG").write_bytes(b"not an image either")
    data = ["--data=spectral_ssl.data.ImageFolderDataModule", f"--data.root={root}", "--data.num_workers=0"]
    data += ["--data.image_size=32", "--data.eval_resize=32"]
    capsys.readouterr()
    main(["knn", str(checkpoint), *data, "--k=[5]", "--other_data=true"])  # a digits checkpoint on a tree
    assert "features: 58 train x 64" in capsys.readouterr().out
    main(["spectrum", str(checkpoint), *data, "--split=train", f"--out={tmp_path / 'spectrum'}", "--other_data=true"])
    assert "(58 images of the train split)" in capsys.readouterr().out
    cli = main(
        [
            "pretrain",
            "--config=quickstart",
            "--model.backbone.width=8",
            "--model.projector_dims=[64,64]",
            *data,
            "--data.batch_size=16",
            "--trainer.max_epochs=1",
            "--knn.k=5",
            "--spectrum.every_n_epochs=0",
            "--output_dir",
            str(tmp_path),
            *FAST_RUN,
        ]
    )
    assert cli.callback(KNNMonitor).sizes == (58, 58)  # 29 + 29 readable training images; val has none broken
    assert "(58 bank images, 58 queries)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_vit_run_resumes_and_every_evaluation_command_reads_its_checkpoint(tmp_path, capsys):
    """A one-block ViT: one epoch, then the same command for two resumes it; knn, linear-fast,
    spectrum and the linear protocol (a step) read its checkpoint, rebuilt for the 16 px digits."""
    args = ["pretrain", "--config=quickstart", "--model.backbone.name=vit_tiny", "--model.backbone.depth=1",
            "--model.backbone.embed_dim=24", "--model.backbone.num_heads=2", "--model.projector_dims=[64,64]",
            "--data.batch_size=64", "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0",
            "--output_dir", str(tmp_path), "--run_name", "vit", *FAST_RUN]  # fmt: skip
    main([*args, "--trainer.max_epochs=1"])
    capsys.readouterr()
    main([*args, "--trainer.max_epochs=2"])
    assert "Resuming from" in capsys.readouterr().err
    checkpoint = tmp_path / "vit" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    main(["knn", str(checkpoint), "--k=[5]"])
    assert "features: 1437 train x 24" in capsys.readouterr().out
    assert 0.0 <= main(["linear-fast", str(checkpoint), "--epochs=2"]) <= 1.0
    summaries = main(["spectrum", str(checkpoint), f"--out={tmp_path / 'spectrum'}"])
    assert summaries["backbone"]["dim"] == 24
    linear = ["linear", str(checkpoint), "--config", str(ROOT / "configs" / "linear" / "digits.yaml")]
    cli = main([*linear, "--trainer.max_steps=1", "--output_dir", str(tmp_path), *FAST_RUN])
    assert cli.trainer.global_step == 1 and cli.model.classifier.in_features == 24


def test_the_knn_command_at_a_low_temperature_equals_the_exact_vote(checkpoint, exact_weighted_vote):
    """``knn CKPT --k [20] --temperature 0.01`` printed 60% where the exact weighted vote gives 92%:
    exp(sim / T) overflowed float32 and every class tied. Now it equals the vote computed exactly
    (each class's log-sum-exp of sim / T, float64)."""
    backbone, _ = load_encoder(checkpoint)
    bank_loader, test_loader = digits().knn_dataloaders()
    (bank, bank_labels), (queries, labels) = (
        extract_features(backbone, bank_loader),
        extract_features(backbone, test_loader),
    )
    for temperature in (0.01, 0.003):
        results = main(["knn", str(checkpoint), "--k=[20]", f"--temperature={temperature}"])
        exact = (exact_weighted_vote(bank, bank_labels, queries, 20, temperature, 10) == labels).float().mean().item()
        assert results[f"weighted k=20 T={temperature}"] == pytest.approx(exact, abs=1e-12)


def official_eval_sgd(x_train, y_train, x_test, y_test, epochs, batch, generator):
    """winci-ai/INTL's eval_sgd written out (its behaviour as facts): nn.Linear's own initialisation,
    Adam lr 1e-2 weight decay 5e-6 on the raw features, shuffled mini-batches of ``batch``, the lr x
    (1e-6 / 1e-2) ** (1 / epochs) after each epoch; top-1 of the argmax on the test features. Its
    initialisation and orders drawn from ``generator``, as linear_probe draws them."""
    classifier = nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    with torch.no_grad():
        nn.init.kaiming_uniform_(classifier.weight, a=5**0.5, generator=generator)
        classifier.bias.uniform_(-(x_train.shape[1] ** -0.5), x_train.shape[1] ** -0.5, generator=generator)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2, weight_decay=5e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(1e-6 / 1e-2) ** (1 / epochs))
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).split(batch):
            optimizer.zero_grad()
            F.cross_entropy(classifier(x_train[index]), y_train[index]).backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return (classifier(x_test).argmax(1) == y_test).float().mean().item()


def test_the_official_cifar_linear_protocol_equals_its_evaluation_code_written_out():
    """linear_probe with the official options (raw features, exponential decay per epoch, the
    default init, batches of 1000) trains the classifier eval_sgd trains, step for step."""
    from spectral_ssl.evaluation import linear_probe

    generator = torch.Generator().manual_seed(3)
    x_train, y_train = torch.randn(3000, 12, generator=generator), torch.randint(0, 4, (3000,), generator=generator)
    x_test, y_test = torch.randn(500, 12, generator=generator), torch.randint(0, 4, (500,), generator=generator)
    x_train[:, :4] += 3 * F.one_hot(y_train, 4)  # something to learn
    x_test[:, :4] += 3 * F.one_hot(y_test, 4)
    expected = official_eval_sgd(x_train, y_train, x_test, y_test, 20, 1000, torch.Generator().manual_seed(0))
    got = linear_probe(
        x_train, y_train, x_test, y_test, epochs=20, lr=1e-2, weight_decay=5e-6, batch_size=1000, seed=0,
        standardize=False, schedule="exponential", final_lr_ratio=1e-4, init="default",
    )  # fmt: skip
    assert got == expected and got > 0.5


@pytest.mark.parametrize("dataset", ["digits", "cifar10", "cifar100"])
def test_the_official_intl_evaluation_configs_run(checkpoint, tmp_path, dataset, capsys):
    """``linear-fast --config linear_fast/intl_cifar10`` (and 100) and ``knn --config knn/intl_cifar10``
    on CIFAR-format data, and the protocol on the digits (in place of the data); the evaluation
    images normalized as the official code does, CIFAR-10's statistics for both CIFARs."""
    name = "cifar10" if dataset == "digits" else dataset
    data = ["--data=spectral_ssl.data.DigitsDataModule"]
    if dataset != "digits":  # a digits checkpoint, read as CIFAR on purpose
        write_cifar_folder(tmp_path / "cifar", 20 if name == "cifar10" else 10, 8, num_classes=int(name[5:]))
        data = [f"--data.init_args.root={tmp_path / 'cifar'}", "--data.init_args.num_workers=0", "--other_data=true"]
    top1 = main(["linear-fast", str(checkpoint), "--config", f"linear_fast/intl_{name}", *data, "--epochs=3"])
    assert 0.0 <= top1 <= 1.0 and "linear top-1 (fast, cached features, 3 epochs)" in capsys.readouterr().out
    results = main(["knn", str(checkpoint), "--config", f"knn/intl_{name}", *data, "--k=[3]"])
    assert set(results) == {"weighted k=3 T=0.07", "5-NN L2 (INTL)"}
    capsys.readouterr()
    if dataset != "digits":  # both evaluations see the images as the official code normalizes them
        for command, config in (("knn", f"knn/intl_{name}"), ("linear-fast", f"linear_fast/intl_{name}")):
            with pytest.raises(SystemExit):
                main([command, str(checkpoint), "--config", config, *data, "--print_config"])
            printed = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
            assert printed["eval_mean"] == [0.4914, 0.4822, 0.4465] and printed["eval_std"] == [0.247, 0.243, 0.261]


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A tiny ViT pretrained on CIFAR-format data (80 train, 20 test images): its checkpoint."""
    out = tmp_path_factory.mktemp("cifar_run")
    write_cifar_folder(out / "data", train_images=80, test_images=20)
    data = ["--data=spectral_ssl.data.CIFARDataModule", f"--data.root={out / 'data'}", "--data.num_workers=0"]
    vit = ["--model.backbone.name=vit_tiny", "--model.backbone.depth=1", "--model.backbone.embed_dim=24"]
    main(
        ["pretrain", "--config", str(ROOT / "configs" / "quickstart.yaml"), *data, "--data.batch_size=16", *vit,
         "--model.backbone.num_heads=2", "--model.projector_dims=[32,32]", "--trainer.max_steps=2",
         "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--output_dir", str(out), "--run_name", "cifar",
         *FAST_RUN]
    )  # fmt: skip
    return out / "cifar" / "checkpoints" / "last.ckpt"


def test_a_checkpoint_knows_its_data(cifar_run, tmp_path, capsys):
    """knn, linear-fast, spectrum and linear on a CIFAR checkpoint with no --data evaluate CIFAR
    (they evaluated the digits); other data of another size is refused unless said on purpose; the
    export's timm folder and load_backbone carry CIFAR's mean, std and size."""
    from spectral_ssl.checkpoints import load_backbone
    from spectral_ssl.data import CIFARDataModule
    from spectral_ssl.export import export_backbone

    assert set(main(["knn", str(cifar_run), "--k=[5]"])) == {"weighted k=5 T=0.07", "5-NN L2 (INTL)"}
    assert "features: 80 train" in capsys.readouterr().out
    main(["linear-fast", str(cifar_run), "--epochs=2"])
    assert "(extraction" in capsys.readouterr().out
    main(["spectrum", str(cifar_run), "--out", str(tmp_path / "spectrum")])
    assert "20 images of the test split" in capsys.readouterr().out
    cli = main(["linear", str(cifar_run), "--trainer.max_steps=1", "--output_dir", str(tmp_path), *FAST_RUN])
    assert type(cli.datamodule).__name__ == "CIFARDataModule" and cli.datamodule.root == cifar_run.parents[2] / "data"
    refusal = r"error: .*last.ckpt was trained on 32 px images of 10 classes; the data given has 16 px images"
    with pytest.raises(SystemExit, match=refusal + r" of 10 classes.*--other_data=true"):
        main(["knn", str(cifar_run), "--data=spectral_ssl.data.DigitsDataModule"])
    main(["knn", str(cifar_run), "--data=spectral_ssl.data.DigitsDataModule", "--other_data=true", "--k=[5]"])
    files = export_backbone(cifar_run, tmp_path / "export", formats=["safetensors", "timm"], log=lambda *_: None)
    import json

    config = json.loads((files["timm"] / "config.json").read_text())["pretrained_cfg"]
    mean, std = CIFARDataModule.STATS[10]
    assert config["mean"] == list(mean) and config["std"] == list(std) and config["input_size"] == [3, 32, 32]
    loaded = load_backbone(files["safetensors"])
    assert loaded.pretrained_cfg == {"mean": mean, "std": std, "input_size": (3, 32, 32)}
    assert main(["knn", str(files["safetensors"]), "--k=[5]"])  # an export knows its data too

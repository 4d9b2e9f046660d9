"""Monitor budgets: bounded banks and queries whatever the dataset size, monitors that turn off."""

import pytest
import torch

import spectral_ssl.evaluation.monitor as monitor
from spectral_ssl.commands import pretrain
from spectral_ssl.data.synthetic import write_cifar_folder
from spectral_ssl.evaluation import KNNMonitor, SpectrumMonitor

EXTRACTORS = {"extract_shard": monitor.extract_shard, "extract_features": monitor.extract_features}
RUN = [
    "--data=spectral_ssl.data.CIFARDataModule",
    "--data.num_workers=0",
    "--data.batch_size=16",
    "--model.backbone.width=4",
    "--model.backbone.cifar_stem=true",
    "--model.projector_dims=[16,16]",
    "--trainer.max_epochs=1",
    "--trainer.max_steps=1",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--knn.every_n_epochs=1",
    "--knn.max_bank=40",
    "--knn.max_queries=12",
    "--spectrum.every_n_epochs=1",
    "--spectrum.max_images=16",
    "--online_probe.max_images=8",
]


def run_counting_rows(tmp_path, monkeypatch, per_batch, *extra):
    """Pretrains one step on CIFAR files of 6 x per_batch images; returns the CLI and the number
    of rows of every extraction the monitors made."""
    root = tmp_path / f"cifar{per_batch}"
    write_cifar_folder(root, 5 * per_batch, per_batch)
    rows = []

    def counting(extract):
        def wrapper(*args, **kwargs):
            result = extract(*args, **kwargs)
            rows.append(len(result[0]))
            return result

        return wrapper

    for name, extract in EXTRACTORS.items():
        monkeypatch.setattr(monitor, name, counting(extract))
    cli = pretrain(
        [*RUN, f"--data.root={root}", "--output_dir", str(tmp_path / "runs"), "--run_name", str(per_batch), *extra]
    )
    return cli, rows


def test_bank_and_queries_stay_within_budget_whatever_the_dataset_size(tmp_path, monkeypatch):
    small, small_rows = run_counting_rows(tmp_path, monkeypatch, 30)
    large, large_rows = run_counting_rows(tmp_path, monkeypatch, 120)  # 4x the images
    for cli in (small, large):
        knn = next(c for c in cli.trainer.callbacks if isinstance(c, KNNMonitor))
        assert knn.sizes == (40, 12)
        assert set(knn.results) == {"raw pixels", "random init", "trained"}
    # bank 40, held-out 16 (the largest budget: spectrum's), for raw pixels, random init and trained
    assert small_rows == large_rows == [40, 16, 40, 16, 40, 16]


def test_every_n_epochs_zero_turns_each_monitor_off(tmp_path, monkeypatch):
    cli, rows = run_counting_rows(
        tmp_path,
        monkeypatch,
        30,
        "--knn.every_n_epochs=0",
        "--spectrum.every_n_epochs=0",
        "--online_probe.every_n_epochs=0",
    )
    assert rows == [] and cli.trainer.global_step == 1
    knn = next(c for c in cli.trainer.callbacks if isinstance(c, KNNMonitor))
    assert knn.summary() == "kNN monitor off (knn.every_n_epochs=0)"
    assert not any(key.startswith(("knn/", "spectrum/", "online/")) for key in cli.trainer.logged_metrics)


def test_raw_pixels_of_large_images_are_pooled_to_the_stated_size():
    images = torch.arange(2 * 3 * 224 * 224, dtype=torch.float32).view(2, 3, 224, 224)
    pooled = monitor.RawPixels(32)(images)
    assert pooled.shape == (2, 3 * 32 * 32)
    torch.testing.assert_close(pooled[0, 0], images[0, 0, :7, :7].mean())  # 224 / 32 = 7: a 7 x 7 average
    assert torch.equal(monitor.RawPixels(32)(images[..., :32, :32]), images[..., :32, :32].flatten(1))


@pytest.mark.parametrize("name, value", [("max_bank", 0), ("max_queries", -1)])
def test_a_budget_must_be_positive(name, value):
    with pytest.raises(ValueError, match=f"knn.{name} must be a positive number"):
        KNNMonitor(**{name: value})
    with pytest.raises(ValueError, match="spectrum.max_images"):
        SpectrumMonitor(max_images=0)


def test_k_larger_than_the_bank_is_refused_at_the_start(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"error: knn.k=50 .* at least 50 images; this one has 40 \(knn.max_bank=40"):
        run_counting_rows(tmp_path, monkeypatch, 30, "--knn.k=50")
    assert not (tmp_path / "runs" / "30" / "checkpoints").exists()  # refused before any training


def extraction_counts(tmp_path, monkeypatch, share: bool) -> list[int]:
    """Rows of each held-out extraction at the one epoch end of a Trainer of one's own with the
    three monitors (baselines off), given one HeldOutFeatures or each its own."""
    import lightning as L

    from spectral_ssl.data import DigitsDataModule
    from spectral_ssl.evaluation import HeldOutFeatures, OnlineLinearProbe
    from spectral_ssl.methods import INTL

    rows = []

    def counting(*args, **kwargs):
        result = EXTRACTORS["extract_features"](*args, **kwargs)
        rows.append(len(result[0]))
        return result

    monkeypatch.setattr(monitor, "extract_features", counting)
    monitors = [
        KNNMonitor(baselines=False, max_queries=40),
        SpectrumMonitor(every_n_epochs=1, max_images=60),
        OnlineLinearProbe(max_images=20),
    ]
    if share:
        HeldOutFeatures.share(*monitors)
    trainer = L.Trainer(
        max_steps=1,
        callbacks=monitors,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(INTL(backbone={"width": 4}, projector_dims=[16, 16]), datamodule=DigitsDataModule(batch_size=64))
    return rows


def test_monitors_extract_the_held_out_features_once_when_given_one_cache(tmp_path, monkeypatch):
    """Each with its own cache, each monitor extracts its budget; given one (as the commands do),
    the largest budget is extracted once and the others take their rows of it."""
    assert sorted(extraction_counts(tmp_path, monkeypatch, share=False)) == [20, 40, 60]
    assert extraction_counts(tmp_path, monkeypatch, share=True) == [60]


def test_a_model_without_backbone_and_projector_is_refused_by_name():
    import lightning as L

    from spectral_ssl.data import DigitsDataModule
    from spectral_ssl.evaluation import OnlineLinearProbe

    class Plain(L.LightningModule):
        pass

    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    trainer.datamodule = DigitsDataModule()
    for callback in (KNNMonitor(), SpectrumMonitor(), OnlineLinearProbe()):
        with pytest.raises(TypeError, match="reads the model's backbone.*; Plain has no backbone"):
            callback.setup(trainer, Plain(), "fit")

    class BackboneOnly(L.LightningModule):  # enough for the kNN monitor and the probe, not the spectrum
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Flatten()
            self.backbone.feature_dim = 768

    KNNMonitor().setup(trainer, BackboneOnly(), "fit")
    with pytest.raises(TypeError, match="reads the model's backbone and projector; BackboneOnly has no projector"):
        SpectrumMonitor().setup(trainer, BackboneOnly(), "fit")


def test_a_shared_cache_never_serves_another_fits_features(tmp_path):
    """Monitors reused by a second Trainer (same model, the step count again at 0) extract anew."""
    import lightning as L

    from spectral_ssl.data import DigitsDataModule
    from spectral_ssl.evaluation import HeldOutFeatures

    held_out = HeldOutFeatures()
    held_out.request("spectrum", 20)
    model, data = torch.nn.Flatten(), DigitsDataModule()
    data.setup("fit")
    first, second = (L.Trainer(logger=False, default_root_dir=str(tmp_path)) for _ in range(2))
    first.datamodule = second.datamodule = data
    features = held_out.get(first, model, "cpu", 20)
    assert held_out.get(first, model, "cpu", 20) is features  # the same (trainer, step, model): reused
    assert held_out.get(second, model, "cpu", 20) is not features

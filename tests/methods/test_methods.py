"""Every method pretrains from the command line and lowers its loss."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_ssl.commands import pretrain

ROOT = Path(__file__).resolve().parents[2]
METHODS = {
    "INTL": [],
    # switching --model keeps same-named init_args of the config (INTL's axis=0, eps=0): set them
    "SpectralTransform": ["--model.power=-0.5", "--model.axis=1", "--model.eps=1e-5"],
    "BarlowTwins": [],
    "VICReg": [],
    "SimCLR": ["--model.temperature=0.2"],
    "WMSE": [
        "--model.projector_dims=[64,16]",
        "--model.w_size=32",
        "--model.optimizer.name=adam",
        "--model.optimizer.lr=0.002",
    ],
    "BYOL": ["--model.projector_dims=[64,32]", "--model.predictor_hidden_dims=[64]"],
    "INTL-momentum-multicrop": ["--model=spectral_ssl.methods.INTL", "--model.momentum=0.99", "--data.num_views=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_method_pretrains_and_its_loss_decreases(tmp_path, method, trained_against_initial):
    """2 epochs lower the loss on the same four batches of views below 99% of the initial model's
    (the reference: the same model before training, rebuilt from the run's seed). Measured: 0.18
    (Barlow Twins) to 0.92 (W-MSE), 0.975 with the momentum target. Comparing logged losses of the
    first and second epoch (other batches each step) failed for W-MSE on some CPUs: its loss moves
    less than the batch-to-batch noise."""
    cli = pretrain(
        [
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--output_dir",
            str(tmp_path),
            "--run_name",
            method,
            f"--model=spectral_ssl.methods.{method.split('-')[0]}",
            "--model.backbone.width=8",
            "--model.projector_dims=[64,64]",
            "--data.batch_size=64",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
            "--knn.every_n_epochs=0",
            "--spectrum.every_n_epochs=0",
            *METHODS[method],
        ]
    )
    trained, initial = trained_against_initial(cli)
    assert trained < 0.99 * initial
    assert len(EventAccumulator(str(tmp_path / method)).Reload().Scalars("train/loss")) == 2 * (1437 // 64)
    assert (tmp_path / method / "checkpoints" / "last.ckpt").exists()


def test_momentum_target_is_an_ema_with_a_cosine_schedule():
    from torch import nn

    from spectral_ssl.methods.momentum import MomentumTarget, cosine_momentum

    assert cosine_momentum(0, 100, base=0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, base=0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, base=0.99) == pytest.approx(1.0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = MomentumTarget(online)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    target.update([online], 0.9)
    for old, new, current in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * current)
        assert not new.requires_grad


VIT = ["--model.backbone.name=vit_tiny", "--model.backbone.depth=2", "--model.backbone.embed_dim=48"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "norm, act", [("ln", None), ("rms", None), ("pln", None), ("pls", None), ("lng", None), ("pln", "pln")]
)
def test_a_vit_with_each_norm_pretrains_with_intl(tmp_path, norm, act, trained_against_initial):
    """A small ViT (2 blocks, width 48, the digits' 16 px in patches of 4) with each transformer
    norm, and PLN as the MLPs' activation: 2 epochs of INTL lower the loss on the same batches."""
    cli = pretrain(
        [
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            *VIT,
            "--model.backbone.patch_size=4",
            f"--model.backbone.norm={norm}",
            *([f"--model.backbone.act={act}"] if act else []),
            "--model.projector_dims=[64,64]",
            "--model.optimizer.name=adamw",
            "--model.optimizer.lr=0.002",
            "--model.optimizer.weight_decay=0.05",
            "--data.batch_size=64",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            "--knn.every_n_epochs=0",
            "--spectrum.every_n_epochs=0",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert type(cli.model.backbone).__name__ == "VisionTransformer"
    trained, initial = trained_against_initial(cli)
    assert trained < 0.99 * initial, (trained, initial)

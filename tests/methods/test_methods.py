"""Every method pretrains from the command line and lowers its loss."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_ssl.cli import pretrain

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


@pytest.mark.parametrize("method", METHODS)
def test_method_pretrains_and_its_loss_decreases(tmp_path, method):
    pretrain(
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
            *METHODS[method],
        ]
    )
    events = EventAccumulator(str(tmp_path / method))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    half = len(losses) // 2
    assert sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half
    assert (tmp_path / method / "checkpoints" / "last.ckpt").exists()


def test_momentum_target_is_an_ema_with_a_cosine_schedule():
    import torch
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

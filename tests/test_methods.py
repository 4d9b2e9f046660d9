"""Every method pretrains from the command line and lowers its loss."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_ssl.cli import pretrain

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "INTL": [],
    # switching --model keeps same-named init_args of the config (INTL's axis=0, eps=0): set them
    "SpectralTransform": ["--model.power=-0.5", "--model.axis=1", "--model.eps=1e-5"],
    "BarlowTwins": [],
    "VICReg": [],
    "SimCLR": ["--model.temperature=0.2"],
}


@pytest.mark.parametrize("method", METHODS)
def test_method_pretrains_and_its_loss_decreases(tmp_path, method):
    pretrain(["--config", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path), "--run_name", method,
              f"--model=spectral_ssl.methods.{method}", *METHODS[method], "--model.backbone.width=8",
              "--model.projector_dims=[64,64]", "--data.batch_size=64", "--trainer.max_epochs=2",
              "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"])
    events = EventAccumulator(str(tmp_path / method))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    half = len(losses) // 2
    assert sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half
    assert (tmp_path / method / "checkpoints" / "last.ckpt").exists()

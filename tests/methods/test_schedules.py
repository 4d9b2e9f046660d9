"""Every schedule runs on one clock, optimizer steps of the run's real budget, whatever bounds the
run; per-step state (the momentum target, the online probe) advances once per optimizer step under
gradient accumulation. Each way of bounding a run is compared with the closed form."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_post_hook

from spectral_ssl.commands import main
from spectral_ssl.methods.momentum import MomentumTarget, cosine_momentum

TRAIN_IMAGES = 1437  # the digits' training split
QUIET = ["--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--online_probe.every_n_epochs=0"]


def closed_form_lr(step: int, peak: float, warmup: int, total: int, ratio: float = 0.001) -> float:
    """The documented schedule (optim.WarmupCosine, the official INTL code's), written out again."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step + 1 - warmup) / max(total - warmup, 1)
    return peak * (ratio + (1 - ratio) * (1 + math.cos(math.pi * progress)) / 2)


def logged_lrs(run) -> dict[int, float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/lr")}


# (flags, optimizer steps per epoch S, total steps T) at 128 images per batch: 11 batches an epoch
BOUNDS = {
    "max_epochs": (["--trainer.max_epochs=2"], 11, 22),
    "max_steps alone": (["--trainer.max_epochs=-1", "--trainer.max_steps=4"], 11, 4),
    "max_steps first": (["--trainer.max_epochs=3", "--trainer.max_steps=15"], 11, 15),
    "max_epochs first": (["--trainer.max_epochs=1", "--trainer.max_steps=100"], 11, 11),
    "limit_train_batches": (["--trainer.max_epochs=2", "--trainer.limit_train_batches=5"], 5, 10),
    "accumulation": (["--trainer.max_epochs=2", "--trainer.accumulate_grad_batches=3"], 4, 8),
    "accumulation and max_steps": (
        ["--trainer.max_epochs=-1", "--trainer.max_steps=6", "--trainer.accumulate_grad_batches=2"],
        6,
        6,
    ),
}


@pytest.mark.parametrize("bound", BOUNDS)
def test_the_learning_rate_follows_the_closed_form_however_the_run_is_bounded(tmp_path, tiny, bound):
    """warmup_epochs=0.5 is W = round(0.5 S) optimizer steps whatever bounds the run (a run bounded
    by max_steps used to get no warm-up at all); T is the run's real number of optimizer steps."""
    flags, steps_per_epoch, total = BOUNDS[bound]
    main(
        [
            "pretrain",
            *tiny,
            *QUIET,
            "--data.batch_size=128",
            "--model.optimizer.warmup_epochs=0.5",
            "--output_dir",
            str(tmp_path),
            *flags,
        ]
    )
    run = tmp_path / "quickstart"
    lrs = logged_lrs(run)
    accumulate = next((int(f.split("=")[1]) for f in flags if "accumulate_grad_batches" in f), 1)
    peak = 0.6 * 128 * accumulate / 256  # the quick start's lr, scaled to the global batch
    warmup = round(0.5 * steps_per_epoch)
    assert sorted(lrs) == list(range(total))
    assert [lrs[k] for k in range(total)] == pytest.approx(
        [closed_form_lr(k, peak, warmup, total) for k in range(total)], rel=1e-5
    )
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == total
    assert checkpoint["lr_schedulers"][0] == {"step": total, "steps_per_epoch": steps_per_epoch}


def test_a_run_that_nothing_bounds_is_refused_with_the_fix(tmp_path, tiny):
    with pytest.raises(
        SystemExit, match=r"error: the run has no end .* set --trainer.max_epochs or --trainer.max_steps"
    ):
        main(["pretrain", *tiny, *QUIET, "--output_dir", str(tmp_path), "--trainer.max_epochs=-1"])


MOMENTUM_METHODS = {
    "BYOL": [
        "--model=spectral_ssl.methods.BYOL",
        "--model.projector_dims=[64,32]",
        "--model.predictor_hidden_dims=[64]",
        "--model.base_momentum=0.99",
    ],
    "momentum INTL": ["--model=spectral_ssl.methods.INTL", "--model.momentum=0.99"],
}


@pytest.mark.parametrize("accumulate", [1, 2, 3])
@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_per_step_state_advances_once_per_optimizer_step(tmp_path, tiny, monkeypatch, method, accumulate):
    """3 optimizer steps move the momentum target 3 times, with the momenta of steps 1, 2, 3 of 3
    (0.9925, 0.9975, 1.0 from 0.99; BYOL's of steps 0, 1, 2), and step the online probe 3 times,
    whatever the accumulation."""
    momenta, probe_steps = [], []
    update = MomentumTarget.update

    def recorded_update(self, online, momentum):
        momenta.append(momentum)
        return update(self, online, momentum)

    monkeypatch.setattr(MomentumTarget, "update", recorded_update)

    def count_probe_steps(optimizer, args, kwargs):
        if optimizer.param_groups[0]["params"][0].shape[0] == 10:  # the probe's (classes, features) weight
            probe_steps.append(1)

    handle = register_optimizer_step_post_hook(count_probe_steps)
    try:
        main(
            [
                "pretrain",
                *tiny,
                "--knn.every_n_epochs=0",
                "--spectrum.every_n_epochs=0",
                "--output_dir",
                str(tmp_path),
                "--trainer.max_epochs=-1",
                "--trainer.max_steps=3",
                f"--trainer.accumulate_grad_batches={accumulate}",
                *MOMENTUM_METHODS[method],
            ]
        )
    finally:
        handle.remove()
    # after step k: INTL's official code moves its key encoder with m_k, BYOL's and solo-learn's with tau_{k-1}
    lag = 1 if method == "BYOL" else 0
    expected = [cosine_momentum(k - lag, 3, 0.99) for k in (1, 2, 3)]
    assert momenta == pytest.approx(expected, abs=1e-12)
    assert momenta == pytest.approx([0.99, 0.9925, 0.9975] if lag else [0.9925, 0.9975, 1.0], abs=1e-12)
    assert len(probe_steps) == 3
    events = EventAccumulator(str(tmp_path / "quickstart"))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("train/momentum")}  # per optimizer step
    assert [logged[k] for k in sorted(logged)] == pytest.approx(expected, abs=1e-6)


LAYOUT_CHANGES = {
    # (first run's flags, the resumed run's flags, S2 the new steps per epoch, position resumed at, T)
    "more epochs, half the batch": (
        ["--trainer.max_epochs=2"],
        ["--trainer.max_epochs=4", "--data.batch_size=32"],
        44,
        88,
        176,
    ),
    "bounded by steps, half the batch": (
        ["--trainer.max_epochs=1"],
        ["--trainer.max_epochs=-1", "--trainer.max_steps=30", "--data.batch_size=32"],
        44,
        44,
        52,
    ),
    "accumulation": (
        ["--trainer.max_epochs=2"],
        ["--trainer.max_epochs=3", "--trainer.accumulate_grad_batches=2"],
        11,
        22,
        33,
    ),
}


@pytest.mark.parametrize("change", LAYOUT_CHANGES)
def test_every_schedule_continues_at_the_same_fraction_after_a_layout_change(tmp_path, tiny, monkeypatch, change):
    """Momentum INTL for some epochs at 64 images a batch (22 steps an epoch), resumed with another
    batch size or accumulation (an allowed change): the lr re-mapped its position to the new steps
    per epoch, but the EMA momentum read Lightning's global_step, counted in the old layout (half-way
    0.915 instead of 0.951, the last step at 0.985, never 1). Now both continue at the same fraction
    of training, one clock, and end where planned: the last momentum 1, the last lr the minimum."""
    first, resumed, per_epoch, position, total = LAYOUT_CHANGES[change]
    momenta = []
    update = MomentumTarget.update

    def recorded_update(self, online, momentum):
        momenta.append(momentum)
        return update(self, online, momentum)

    common = [
        *tiny,
        *QUIET,
        "--model.momentum=0.9",
        "--model.optimizer.warmup_epochs=0.5",
        "--output_dir",
        str(tmp_path),
    ]
    main(["pretrain", *common, *first])
    monkeypatch.setattr(MomentumTarget, "update", recorded_update)
    main(["pretrain", *common, *resumed])
    expected = [cosine_momentum(k, total, 0.9) for k in range(position + 1, total + 1)]
    assert momenta == pytest.approx(expected, abs=1e-12)
    assert momenta[-1] == 1.0
    last_lr = logged_lrs(tmp_path / "quickstart")
    accumulate = 2 if "accumulation" in change else 1
    peak = 0.6 * (32 if "--data.batch_size=32" in resumed else 64) * accumulate / 256
    assert last_lr[max(last_lr)] == pytest.approx(
        closed_form_lr(total - 1, peak, round(0.5 * per_epoch), total), rel=1e-5
    )
    assert last_lr[max(last_lr)] == pytest.approx(0.001 * peak, rel=1e-5)

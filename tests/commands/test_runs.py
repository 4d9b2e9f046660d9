"""A run folder is one run: resolved paths, the newest intact checkpoint, no mixing of runs, and
checkpoint writes that cannot leave a half-written file or fail silently."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from faults import ENV, at_batch
from spectral_ssl.commands import main
from spectral_ssl.runs import AtomicCheckpointIO, newest_intact_checkpoint

MARKER = None  # the file a malicious pickle would create


@pytest.fixture(scope="module")
def run_args(tiny):
    """The tiny run without the kNN and spectrum monitors, named ``tiny``."""
    return [*tiny, "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--run_name", "tiny"]


def epochs_of(path):
    return torch.load(path, weights_only=True)["epoch"]


def test_the_same_run_given_relative_then_absolute_resumes_into_one_last_checkpoint(tmp_path, monkeypatch, run_args):
    monkeypatch.chdir(tmp_path)
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", "runs"])
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path / "runs")])
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]  # no last-v1.ckpt
    assert epochs_of(folder / "last.ckpt") == 1


def test_starting_over_in_a_folder_that_holds_a_run_is_refused_or_moves_it_aside(tmp_path, run_args):
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    before = (tmp_path / "tiny" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=r"already holds a run .* new --run_name, or add --overwrite=true"):
        main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path), "--resume=false"])
    assert (tmp_path / "tiny" / "checkpoints" / "last.ckpt").read_bytes() == before  # untouched
    main(
        [
            "pretrain",
            *run_args,
            "--trainer.max_epochs=1",
            "--output_dir",
            str(tmp_path),
            "--resume=false",
            "--overwrite=true",
        ]
    )
    moved = list(tmp_path.glob("tiny.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_damaged_newest_checkpoint_is_named_and_the_newest_intact_one_resumed(tmp_path, capsys, run_args):
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--checkpoint.save_top_k=-1", "--output_dir", str(tmp_path)])
    folder = tmp_path / "tiny" / "checkpoints"
    last = folder / "last.ckpt"
    assert last.is_symlink() and last.resolve().name.startswith("epoch=1-")  # a link, not a second copy
    newest = last.resolve()
    newest.write_bytes(newest.read_bytes()[:1000])  # killed mid-write on a filesystem without atomic rename
    (intact,) = folder.glob("epoch=0-*.ckpt")
    (folder / ".epoch=1-step=44.ckpt.tmp-999").write_bytes(b"half a write")
    assert newest_intact_checkpoint(list(folder.glob("*.ckpt")))[0] == intact
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"{last} is damaged" in err and f"{newest} is damaged" in err and f"Resuming from {intact}" in err
    assert "tmp-999, a checkpoint write that was interrupted" in err
    assert epochs_of(last) == 1 and not list(folder.glob(".*tmp-*"))


def test_a_moved_run_folder_continues_as_the_same_run(tmp_path, run_args):
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path / "old")])
    shutil.move(tmp_path / "old", tmp_path / "new")  # last.ckpt is a relative link: it moves with the folder
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path / "new")])
    assert epochs_of(tmp_path / "new" / "tiny" / "checkpoints" / "last.ckpt") == 1


class _Payload:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def test_a_malicious_checkpoint_is_never_unpickled(tmp_path, monkeypatch, capsys, run_args):
    """A checkpoint holding a pickled callable (here: one that would create a file) is refused as
    ``--ckpt_path`` and passed over on automatic resume; its code never runs."""
    global MARKER
    MARKER = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, evil)
    with pytest.raises(SystemExit, match=r"error: --ckpt_path=.*evil\.ckpt: UnpicklingError"):
        main(["pretrain", *run_args, "--output_dir", str(tmp_path), f"--ckpt_path={evil}"])
    folder = tmp_path / "tiny" / "checkpoints"
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    shutil.copy(evil, folder / "hpc_ckpt_9.ckpt")
    shutil.copy(evil, tmp_path / "tiny" / "hpc_ckpt_9.ckpt")  # newer than last.ckpt
    capsys.readouterr()
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)])
    assert "hpc_ckpt_9.ckpt is damaged (UnpicklingError" in capsys.readouterr().err
    assert not MARKER.exists() and epochs_of(folder / "last.ckpt") == 1


KILLED_MID_WRITE = """
import os, signal, sys, torch
from spectral_ssl.runs import AtomicCheckpointIO

class KilledAfterOneMiB:  # the file torch.save writes into; the process dies once 1 MiB is written
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, data):
        self.f.write(data)
        self.written += len(data)
        if self.written > 2**20:
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return len(data)
    def flush(self):
        self.f.flush()

save = torch.save
torch.save = lambda obj, f: save(obj, KilledAfterOneMiB(f))
state = {f"w{i}": torch.ones(2**20) for i in range(16)}  # 16 tensors of 4 MiB, written one by one
AtomicCheckpointIO().save_checkpoint({"state_dict": state}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL once 1 MiB of a 64 MiB checkpoint is written: the target still holds the previous
    checkpoint, never part of the new one; only the temporary file is partial."""
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (partial,) = tmp_path.glob(".last.ckpt.tmp-*")
    assert 2**20 < partial.stat().st_size < 2**26  # killed mid-write
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.zeros(3))


def test_resuming_with_changed_settings_refuses_before_touching_anything_or_applies_and_states(
    tmp_path, capsys, run_args
):
    """A key that defines the run (width) is refused, naming it, with config.yaml and checkpoints
    untouched; max_epochs and the learning rate are applied: the resumed epoch's learning rates
    are those of a run planned that way from the start (x 0.5 for half the lr)."""

    def lrs(name):
        events = EventAccumulator(str(tmp_path / name))
        events.Reload()
        return [e.value for e in events.Scalars("train/lr")][-steps_per_epoch:]

    steps_per_epoch = 1437 // 64
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path), "--run_name", "straight"])
    for name in ("same_lr", "half_lr"):
        main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path), "--run_name", name])
    run = tmp_path / "same_lr"
    before = {p: p.read_bytes() for p in [run / "config.yaml", *(run / "checkpoints").iterdir()]}
    capsys.readouterr()
    with pytest.raises(
        SystemExit,
        match=r"error: .*other settings .*model\.backbone\.width: 8 -> 16\. These cannot "
        r"change within a run: drop them to resume it, or give a new --run_name",
    ):
        main(
            [
                "pretrain",
                *run_args,
                "--trainer.max_epochs=2",
                "--output_dir",
                str(tmp_path),
                "--run_name",
                "same_lr",
                "--model.backbone.width=16",
            ]
        )
    assert {p: p.read_bytes() for p in before} == before

    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path), "--run_name", "same_lr"])
    assert "applied from here on: trainer.max_epochs: 1 -> 2" in capsys.readouterr().err
    lr = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["optimizer"]["lr"]
    main(
        [
            "pretrain",
            *run_args,
            "--trainer.max_epochs=2",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "half_lr",
            f"--model.optimizer.lr={lr / 2}",
        ]
    )
    assert f"model.optimizer.lr: {lr} -> {lr / 2}" in capsys.readouterr().err
    assert lrs("same_lr") == pytest.approx(lrs("straight"), rel=1e-6)
    assert lrs("half_lr") == pytest.approx([v / 2 for v in lrs("straight")], rel=1e-6)
    assert yaml.safe_load((tmp_path / "half_lr" / "config.yaml").read_text())["trainer"]["max_epochs"] == 2

    # another per-device batch from an end-of-epoch checkpoint: epoch 3 runs 1437 // 32 steps on the re-planned schedule
    main(
        [
            "pretrain",
            *run_args,
            "--trainer.max_epochs=3",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "straight",
            "--data.batch_size=32",
        ]
    )
    assert "data.batch_size: 64 -> 32" in capsys.readouterr().err
    resumed = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * steps_per_epoch + 1437 // 32
    assert resumed["lr_schedulers"][0] == {"step": 2 * (1437 // 32) + 1437 // 32, "steps_per_epoch": 1437 // 32}


def test_ckpt_path_chooses_the_checkpoint_like_lightning(tmp_path, capsys, run_args):
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path), "--run_name", "first"])
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    main(
        [
            "pretrain",
            *run_args,
            "--trainer.max_epochs=2",
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "second",
            f"--ckpt_path={first}",
        ]
    )  # continues another folder's checkpoint into this one
    assert f"Resuming from {first.resolve()}" in capsys.readouterr().err
    assert epochs_of(tmp_path / "second" / "checkpoints" / "last.ckpt") == 1
    with pytest.raises(SystemExit, match=r"error: no intact checkpoint named hpc_ckpt_N\.ckpt in .*second"):
        main(
            [
                "pretrain",
                *run_args,
                "--trainer.max_epochs=3",
                "--output_dir",
                str(tmp_path),
                "--run_name",
                "second",
                "--ckpt_path=hpc",
            ]
        )
    with pytest.raises(SystemExit, match=r"error: --ckpt_path=missing\.ckpt: no such file"):
        main(["pretrain", *run_args, "--output_dir", str(tmp_path), "--run_name", "second", "--ckpt_path=missing.ckpt"])
    with pytest.raises(SystemExit, match=r"--ckpt_path resumes a run; drop it or --resume=false"):
        main(
            [
                "pretrain",
                *run_args,
                "--output_dir",
                str(tmp_path),
                "--run_name",
                "x",
                "--ckpt_path=last",
                "--resume=false",
            ]
        )


def test_checkpoint_writes_are_atomic_and_a_failed_write_stops_the_run(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_a_mid_epoch_checkpoint_refuses_another_batch_layout_before_touching_the_run(tmp_path, run_args):
    args = [*run_args, "--trainer.max_steps=5", "--checkpoint.every_n_train_steps=5", "--output_dir", str(tmp_path)]
    main(["pretrain", *args])
    config = (tmp_path / "tiny" / "config.yaml").read_bytes()
    for change, now in (
        ("--data.batch_size=32", "1 x 32, accumulating 1"),
        ("--trainer.accumulate_grad_batches=2", "1 x 64, accumulating 2"),
    ):
        with pytest.raises(
            SystemExit,
            match=r"error: the checkpoint was written mid-epoch by 1 process\(es\) x 64 images per batch, accumulating "
            rf"1 batch\(es\) a step; it resumes only with the same, not {now} \(resume from an end-of-epoch",
        ):
            main(["pretrain", *args, change])
        assert (tmp_path / "tiny" / "config.yaml").read_bytes() == config


@contextlib.contextmanager
def read_only(folder):
    """The folder made read-only for this process: ``chmod``, or for root (whom modes do not stop)
    the immutable attribute."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root, and this filesystem has no immutable attribute: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_checkpoint_folder_stops_the_run_with_its_reason(tmp_path, run_args):
    """A copied run whose checkpoints folder is read-only: the resumed run stops with exit 1 and
    the reason at its first checkpoint, and the previous checkpoint stays intact (Lightning's own
    IO logs the PermissionError and goes on, exit 0 without the checkpoint)."""
    main(["pretrain", *run_args, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    folder = tmp_path / "tiny" / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with read_only(folder):
        with pytest.raises(
            SystemExit,
            match=r"error: could not write checkpoint .*(Permission denied|not permitted).* "
            r"free space or fix the folder's permissions",
        ):
            main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def run_pretrain(args, fault, env=ENV):
    """``spectral-ssl pretrain ARGS`` in a real process, with ``fault`` (a ``--trainer.callbacks``
    argument of :func:`faults.at_batch`) injected from inside the run."""
    command = [sys.executable, "-c", "from spectral_ssl.commands import main; main()", "pretrain", *args, fault]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def assert_same_weights(path, expected_path):
    state, expected = (torch.load(p, weights_only=True)["state_dict"] for p in (path, expected_path))
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key


STEPS_PER_EPOCH = 1437 // 64


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, run_args):
    """The tiny run for 2 epochs, uninterrupted: what every killed and resumed run must end as."""
    out = tmp_path_factory.mktemp("straight")
    main(["pretrain", *run_args, "--trainer.max_epochs=2", "--output_dir", str(out)])
    return out / "tiny" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_exactly_from_its_step_checkpoint(tmp_path, run_args, straight_run):
    """``--checkpoint.every_n_train_steps``: killed at step 7 of the first epoch (with loader
    workers, whose prefetching once made a resumed epoch start from the wrong order), the run
    continues from its step-5 checkpoint and ends bitwise equal to an uninterrupted run."""
    args = [*run_args, "--trainer.max_epochs=2", "--checkpoint.every_n_train_steps=5", "--data.num_workers=2"]
    args += ["--output_dir", str(tmp_path)]
    killed = run_pretrain(args, at_batch(0, 7, "SIGKILL"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    main(["pretrain", *args])
    assert_same_weights(last, straight_run)


def slurm_job(tmp_path):
    """The environment of a SLURM batch job (id 4242) whose ``scontrol`` is a stand-in that records
    its arguments in ``tmp_path/requeued``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "requeued"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {
        **ENV,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "pretrain",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }


@pytest.mark.slow
def test_a_slurm_requeue_resumes_exactly_from_lightnings_mid_epoch_checkpoint(tmp_path, run_args, straight_run):
    """SLURM's warning signal (SIGUSR1) after step 4 of the second epoch makes Lightning write
    ``hpc_ckpt_1.ckpt`` and call ``scontrol requeue``; SLURM then kills the job. The requeued job,
    running the same command, continues from that checkpoint (newer than ``last.ckpt``) and ends
    bitwise equal to an uninterrupted run."""
    env = slurm_job(tmp_path)
    args = [*run_args, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)]
    killed = run_pretrain(args, at_batch(1, 4, "SIGUSR1", "SIGKILL"), env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
    run = tmp_path / "tiny"
    last, hpc = run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt"
    assert [torch.load(p, weights_only=True)["global_step"] for p in (last, hpc)] == [
        STEPS_PER_EPOCH,
        STEPS_PER_EPOCH + 4,
    ]
    resumed = subprocess.run(
        [sys.executable, "-c", "from spectral_ssl.commands import main; main()", "pretrain", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {hpc}" in resumed.stderr
    assert_same_weights(last, straight_run)


@pytest.mark.slow
def test_a_checkpoint_between_micro_batches_resumes_exactly(tmp_path, run_args):
    """BYOL (a momentum target) with the online probe and ``accumulate_grad_batches=2``: SLURM's
    signal after the 5th micro-batch of the first epoch, half-way through an optimizer step, writes
    a checkpoint that carries the accumulated gradients; the requeued job ends bitwise equal to an
    uninterrupted run, target network and probe included."""
    byol = [
        "--model=spectral_ssl.methods.BYOL",
        "--model.projector_dims=[64,32]",
        "--model.predictor_hidden_dims=[64]",
        "--trainer.accumulate_grad_batches=2",
        "--trainer.max_epochs=2",
    ]
    main(["pretrain", *run_args, *byol, "--output_dir", str(tmp_path / "straight")])
    args = [*run_args, *byol, "--output_dir", str(tmp_path / "requeued")]
    killed = run_pretrain(args, at_batch(0, 5, "SIGUSR1", "SIGKILL"), env=slurm_job(tmp_path))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    hpc = torch.load(tmp_path / "requeued" / "tiny" / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 2 and hpc["accumulated_gradients"]["micro_batches"] == 1
    main(["pretrain", *args])
    expected = tmp_path / "straight" / "tiny" / "checkpoints" / "last.ckpt"
    last = tmp_path / "requeued" / "tiny" / "checkpoints" / "last.ckpt"
    assert_same_weights(last, expected)
    probe = [
        next(v for k, v in torch.load(p, weights_only=True)["callbacks"].items() if "OnlineLinearProbe" in k)
        for p in (last, expected)
    ]
    for key in ("weight", "bias"):
        assert torch.equal(probe[0]["classifier"][key], probe[1]["classifier"][key])


def test_a_run_saved_with_the_architectures_own_norm_spelled_out_resumes_with_it_unset():
    """Runs saved before norm/act defaulted to the architecture's own wrote bn/relu: the same
    run resumed with them unset is the same run; another norm is still a change."""
    from spectral_ssl.runs import config_changes

    def config(**backbone):
        return {"model": {"init_args": {"backbone": {"name": "resnet18", **backbone}}}}

    assert config_changes(config(norm="bn", act="relu"), config(norm=None, act=None)) == ([], [])
    assert config_changes(config(norm="bn"), config(norm="pln")) == ([], ["model.backbone.norm: bn -> pln"])
    vit = {"model": {"init_args": {"backbone": {"name": "vit_tiny", "norm": None}}}}
    assert config_changes(vit, {"model": {"init_args": {"backbone": {"name": "vit_tiny", "norm": "ln"}}}}) == ([], [])


def test_a_run_saved_before_an_option_existed_resumes_with_its_default():
    """Options added since a run was saved (the stem's padding, the schedule's convention, LARS's
    trust ratio...) are absent from its config.yaml: their defaults are what it trained with, not a
    change; another value is."""
    from spectral_ssl.runs import config_changes

    def config(backbone=None, optimizer=None):
        return {"model": {"init_args": {"backbone": {"name": "resnet18", **(backbone or {})},
                                        "optimizer": {"lr": 0.3, **(optimizer or {})}}}}  # fmt: skip

    current = config({"cifar_stem_padding": 1}, {"schedule": "intl", "trust_coeff": 0.001, "trust_clip": False})
    assert config_changes(config(), current) == ([], [])
    changed = config({"cifar_stem_padding": 2}, {"schedule": "bolts"})
    assert config_changes(config(), changed)[1] == [
        "model.backbone.cifar_stem_padding: 1 -> 2",
        "model.optimizer.schedule: intl -> bolts",
    ]
    linear = {"model": {"init_args": {"lr": 0.1}}}  # no backbone group: nothing filled in
    assert config_changes(linear, linear) == ([], [])

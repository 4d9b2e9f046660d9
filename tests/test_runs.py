"""A run folder is one run: resolved paths, the newest intact checkpoint, no mixing of runs, and
checkpoint writes that cannot leave a half-written file or fail silently."""

import os

import pytest
import torch

from spectral_ssl.cli import main
from spectral_ssl.runs import AtomicCheckpointIO, newest_intact_checkpoint
from test_pretrain import TINY

RUN = [*TINY, "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--run_name", "tiny"]


def epochs_of(path):
    return torch.load(path, weights_only=True)["epoch"]


def test_the_same_run_given_relative_then_absolute_resumes_into_one_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", "runs"])
    main(["pretrain", *RUN, "--trainer.max_epochs=2", "--output_dir", str(tmp_path / "runs")])
    folder = tmp_path / "runs" / "tiny" / "checkpoints"
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]  # no last-v1.ckpt
    assert epochs_of(folder / "last.ckpt") == 1


def test_starting_over_in_a_folder_that_holds_a_run_is_refused_or_moves_it_aside(tmp_path):
    main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    before = (tmp_path / "tiny" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(SystemExit, match=r"already holds a run .* new --run_name, or add --overwrite=true"):
        main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", str(tmp_path), "--resume=false"])
    assert (tmp_path / "tiny" / "checkpoints" / "last.ckpt").read_bytes() == before  # untouched
    main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", str(tmp_path), "--resume=false",
          "--overwrite=true"])
    moved = list(tmp_path.glob("tiny.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_damaged_newest_checkpoint_is_named_and_the_newest_intact_one_resumed(tmp_path, capsys):
    main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    folder = tmp_path / "tiny" / "checkpoints"
    (intact,) = folder.glob("epoch=*.ckpt")  # Lightning's epoch checkpoint beside last.ckpt
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed mid-write on a filesystem without atomic rename
    assert newest_intact_checkpoint(folder)[0] == intact
    main(["pretrain", *RUN, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "last.ckpt is damaged" in err and f"Resuming from {intact}" in err
    assert epochs_of(last) == 1


def test_checkpoint_writes_are_atomic_and_a_failed_write_stops_the_run(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_a_read_only_checkpoint_folder_stops_the_run_with_its_reason(tmp_path, monkeypatch):
    """A write that fails (here: the rename into the folder is refused) ends the run with exit 1
    and the reason, and leaves the previous checkpoint intact (Lightning's IO logs and goes on)."""
    main(["pretrain", *RUN, "--trainer.max_epochs=1", "--output_dir", str(tmp_path)])
    last = tmp_path / "tiny" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SystemExit, match=r"error: could not write checkpoint .*Permission denied"):
        main(["pretrain", *RUN, "--trainer.max_epochs=2", "--output_dir", str(tmp_path)])
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name]

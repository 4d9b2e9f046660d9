"""Real DDP: two CPU processes with the gloo backend against one process over the whole batch."""

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spectral_ssl.losses import BarlowTwinsLoss, INTLLoss, NTXentLoss, VICRegLoss, WMSELoss

BATCH, DIM_IN, DIM_OUT = 32, 12, 48
LOSSES = {
    "intl": lambda: INTLLoss(),
    "intl_feature_whitening": lambda: INTLLoss(axis=1),
    "barlow_twins": lambda: BarlowTwinsLoss(),
    "vicreg": lambda: VICRegLoss(),
    "nt_xent": lambda: NTXentLoss(temperature=0.2),
    # W-MSE whitens sub-batches of w_size > dim: on 8 of the 48 outputs, 2 sub-batches of 16, twice
    "wmse": lambda: lambda views: WMSELoss(w_size=16, w_iter=2)([v[:, :8] for v in views]),
}


def make_model_and_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM_IN, 24), nn.ReLU(), nn.Linear(24, DIM_OUT)).double()
    views = [torch.randn(BATCH, DIM_IN, dtype=torch.float64) for _ in range(2)]
    return model, views


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for name, make_loss in LOSSES.items():
        model, views = make_model_and_views()
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = BATCH // world
        local = [v[rank * shard : (rank + 1) * shard] for v in views]
        loss = make_loss()([ddp(v) for v in local])["loss"]
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, f"{out_dir}/{name}_rank{rank}.pt"
        )
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", LOSSES)
def test_loss_under_ddp_equals_one_process_over_the_global_batch(ddp_results, name):
    """Same loss and same parameter gradients (DDP averages them) as one process on all 32 images."""
    model, views = make_model_and_views()
    loss = LOSSES[name]()([model(v) for v in views])["loss"]
    loss.backward()
    for rank in range(2):
        result = torch.load(ddp_results / f"{name}_rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-10, atol=1e-10)
        for got, expected in zip(result["grads"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def _extract_worker(rank, world, port, out_dir):
    from torch.utils.data import DataLoader, TensorDataset

    from spectral_ssl.evaluation import extract_features

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    images, labels = torch.arange(11 * 3, dtype=torch.float32).view(11, 3), torch.arange(11) % 4
    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    features, got_labels = extract_features(model, DataLoader(TensorDataset(images, labels), batch_size=4))
    torch.save({"features": features, "labels": got_labels, "state": model.state_dict()}, f"{out_dir}/extract{rank}.pt")
    dist.destroy_process_group()


def test_feature_extraction_is_sharded_then_gathered_in_order(tmp_path):
    """11 images over 2 ranks (the sampler pads one): each rank returns all 11, in dataset order."""
    mp.spawn(_extract_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"extract{rank}.pt", weights_only=True)
        model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        model.load_state_dict(result["state"])
        expected = model.eval()(torch.arange(33, dtype=torch.float32).view(11, 3)).detach()
        torch.testing.assert_close(result["features"], expected)
        assert torch.equal(result["labels"], torch.arange(11) % 4)


KNN_CASES = {
    "weighted k=20": dict(k=20, temperature=0.07),
    "5-NN L2": dict(k=5, temperature=None, metric="l2", normalize=False),
    "majority k=7": dict(k=7, temperature=None),
}


def knn_data(tied_bank):
    """A random bank (float features) and a tied one (integer features, duplicated rows)."""
    generator = torch.Generator().manual_seed(5)
    random = (
        torch.randn(203, 16, generator=generator),
        torch.randint(0, 6, (203,), generator=generator),
        torch.randn(40, 16, generator=generator),
    )
    return {"random": random, "tied": tied_bank}


def _knn_worker(rank, world, port, out_dir, data):
    from spectral_ssl.distributed import shard_range
    from spectral_ssl.evaluation import knn_predict

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for data_name, (bank, labels, queries) in data.items():
        start, end = shard_range(len(bank))
        for name, options in KNN_CASES.items():
            results[f"{data_name} {name}"] = knn_predict(
                bank[start:end], labels[start:end], queries, backend="torch", chunk_size=16, sharded=True, **options
            )
        # a share smaller than k: rank 1 holds 3 of 23 rows
        cut = 20 if rank == 0 else 3
        part = (bank[:20], labels[:20]) if rank == 0 else (bank[20:23], labels[20:23])
        assert len(part[0]) == cut
        results[f"{data_name} small share"] = knn_predict(*part, queries, k=10, backend="torch", sharded=True)
    torch.save(results, f"{out_dir}/knn{rank}.pt")
    dist.destroy_process_group()


def test_sharded_knn_equals_one_process_exactly(tmp_path, tied_bank):
    """Each of two gloo ranks holds a contiguous share of the bank; the merged answer equals the
    single-process one, ties included, on both ranks."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from spectral_ssl.evaluation import knn_predict

    data = knn_data(tied_bank)
    mp.spawn(_knn_worker, args=(2, free_port(), str(tmp_path), data), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"knn{rank}.pt", weights_only=True)
        for data_name, (bank, labels, queries) in data.items():
            for name, options in KNN_CASES.items():
                expected = knn_predict(bank, labels, queries, backend="torch", **options)
                assert torch.equal(got[f"{data_name} {name}"], expected), (rank, data_name, name)
            expected = knn_predict(bank[:23], labels[:23], queries, k=10, backend="torch")
            assert torch.equal(got[f"{data_name} small share"], expected)


def torchrun(*args, nproc=2):
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "spectral_ssl",
        *args,
    ]


def test_knn_command_under_torchrun_equals_one_process(tmp_path, pretrain):
    import subprocess
    import sys

    run = pretrain(tmp_path, "--trainer.max_epochs=1", "--knn.every_n_epochs=0")
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    single = subprocess.run(
        [sys.executable, "-m", "spectral_ssl", "knn", checkpoint, "--k=[20]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    both = subprocess.run(torchrun("knn", checkpoint, "--k=[20]"), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0 and both.returncode == 0, both.stderr[-3000:]
    lines = lambda out: [line.split("(")[0] for line in out.splitlines() if line.startswith("kNN top-1")]  # noqa: E731
    assert len(lines(single.stdout)) == 2 and lines(both.stdout) == lines(single.stdout)
    assert "share of 718" in both.stdout  # 1437 training images over two processes, none gathered


DDP_RUN = [
    "pretrain",
    "--config",
    "configs/quickstart.yaml",
    "--trainer.accelerator=cpu",
    "--trainer.devices=2",
    "--trainer.strategy=ddp",
    "--model.backbone.width=8",
    "--model.projector_dims=[64,64]",
    "--data.batch_size=64",
    "--spectrum.every_n_epochs=2",
    "--online_probe.every_n_epochs=1",
    "--knn.every_n_epochs=1",
]


def test_pretrain_under_torchrun_with_every_default_on_finishes(tmp_path):
    """The README's multi-GPU command on two gloo processes, progress bar and every monitor on,
    across every monitor's schedule (spectrum at epochs 2 and 3). It used to die at the first
    spectrum epoch: synced metrics were reduced by rank 0's progress bar alone."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        torchrun(*DDP_RUN, "--trainer.max_epochs=3", "--output_dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Epoch 2: 100%" in result.stdout  # the progress bar ran
    assert "trained" in result.stdout and "random init" in result.stdout
    checkpoint = torch.load(tmp_path / "quickstart" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 2


def test_killing_one_rank_ends_the_other_within_seconds(tmp_path):
    """Two ranks started as torchrun starts them; SIGKILL rank 1 mid-training: rank 0 must not
    hang in a collective but exit with an error on its own."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "0",
            "TORCHELASTIC_RUN_ID": "test",
        }
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spectral_ssl",
                    *DDP_RUN,
                    "--trainer.max_epochs=50",
                    "--output_dir",
                    str(tmp_path),
                ],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    last = tmp_path / "quickstart" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.1)
    assert last.exists(), processes[0].communicate()[1][-3000:]
    time.sleep(1.0)  # well inside the next epoch
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        code = processes[0].wait(timeout=60)
    finally:
        for p in processes:
            p.kill()
    assert code != 0
    assert time.time() - killed_at < 30, "rank 0 hung after rank 1 died"

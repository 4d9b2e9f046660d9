"""Real DDP: two CPU processes with the gloo backend against one process over the whole batch."""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spectral_ssl.losses import BarlowTwinsLoss, INTLLoss, NTXentLoss, VICRegLoss, WMSELoss

pytestmark = pytest.mark.slow  # real subprocesses: pytest -m 'not slow' skips them

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
    dist.init_process_group("gloo", store=client(port), rank=rank, world_size=world)
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


def held_store() -> dist.TCPStore:
    """torch.distributed's store served by this (the test) process on a port the OS chose, kept
    bound for the workers' rendezvous: nothing to race for (keep the object alive while they run)."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=5))


def client(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(minutes=5))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    store = held_store()
    mp.spawn(_worker, args=(2, store.port, str(out)), nprocs=2, join=True)
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

    dist.init_process_group("gloo", store=client(port), rank=rank, world_size=world)
    images, labels = torch.arange(11 * 3, dtype=torch.float32).view(11, 3), torch.arange(11) % 4
    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    features, got_labels = extract_features(model, DataLoader(TensorDataset(images, labels), batch_size=4))
    torch.save({"features": features, "labels": got_labels, "state": model.state_dict()}, f"{out_dir}/extract{rank}.pt")
    dist.destroy_process_group()


def test_feature_extraction_is_sharded_then_gathered_in_order(tmp_path):
    """11 images over 2 ranks (the sampler pads one): each rank returns all 11, in dataset order."""
    store = held_store()
    mp.spawn(_extract_worker, args=(2, store.port, str(tmp_path)), nprocs=2, join=True)
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

    dist.init_process_group("gloo", store=client(port), rank=rank, world_size=world)
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
    store = held_store()
    mp.spawn(_knn_worker, args=(2, store.port, str(tmp_path), data), nprocs=2, join=True)
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


def test_a_vision_transformer_pretrains_under_torchrun(tmp_path):
    """A small ViT (2 blocks, width 48, patches of 2 on the digits' 16 px) on two gloo processes with
    every monitor on: it finishes its epoch of 1437 // (2 x 64) steps and saves."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    vit = ["--model.backbone.name=vit_tiny", "--model.backbone.depth=2", "--model.backbone.embed_dim=48"]
    result = subprocess.run(
        torchrun(
            *DDP_RUN, *vit, "--trainer.max_epochs=1", "--spectrum.every_n_epochs=1", "--output_dir", str(tmp_path)
        ),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "trained" in result.stdout
    checkpoint = torch.load(tmp_path / "quickstart" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"]["name"] == "vit_tiny"
    assert checkpoint["global_step"] == 1437 // (2 * 64)


def test_killing_one_rank_ends_the_other(tmp_path):
    """Two ranks started as torchrun starts them (its agent's store, held here on a port the OS
    chose); rank 1 is killed before the 4th batch of the second epoch: rank 0 must not hang in a
    collective but exit with an error on its own."""
    import subprocess
    import sys

    from faults import ENV, at_batch

    root = Path(__file__).resolve().parents[2]
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size=2, is_master=True, timeout=timedelta(minutes=5), wait_for_workers=False
    )
    processes = []
    for rank in range(2):
        env = {
            **ENV,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "0",
            "TORCHELASTIC_RUN_ID": "test",
        }
        command = [
            sys.executable,
            "-m",
            "spectral_ssl",
            *DDP_RUN,
            "--trainer.max_epochs=50",
            "--output_dir",
            str(tmp_path),
        ]
        command.append(at_batch(1, 3, "SIGKILL", rank=1))
        processes.append(
            subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    try:
        _, rank0_errors = processes[0].communicate(timeout=600)  # a bound on a hang, not on a step's time
        processes[1].wait(timeout=600)
    finally:
        for process in processes:
            process.kill()
    assert processes[1].returncode == -9
    assert processes[0].returncode not in (0, None), rank0_errors[-3000:]
    assert torch.load(tmp_path / "quickstart" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("augment_on_device", [True, False])
def test_every_rank_draws_its_own_views(tmp_path, augment_on_device):
    """Two gloo ranks, 16 copies of one image (so equal views mean equal augmentation parameters):
    at the same step every rank's views differ from the other's, row by row, and from one another
    within a rank. The device views were seeded by (seed, epoch, batch) alone, so both ranks drew
    the same parameters for the same row (max difference 0); the CPU views draw per image index."""
    import json
    import pickle
    import subprocess

    import numpy as np

    from faults import ENV
    from spectral_ssl.data.synthetic import write_cifar_folder

    write_cifar_folder(tmp_path / "data", train_images=20, test_images=10)
    image = np.random.default_rng(1).integers(0, 256, 3072, dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        path = tmp_path / "data" / "cifar-10-batches-py" / name
        batch = pickle.loads(path.read_bytes())
        batch["data"][:] = image
        path.write_bytes(pickle.dumps(batch))
    record = [{"class_path": "probes.SaveViews", "init_args": {"folder": str(tmp_path / "views")}}]
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        torchrun(
            *DDP_RUN,
            "--data=spectral_ssl.data.CIFARDataModule",
            f"--data.root={tmp_path / 'data'}",
            "--data.batch_size=8",
            "--data.num_workers=0",
            f"--data.augment_on_device={str(augment_on_device).lower()}",
            "--trainer.max_steps=1",
            "--trainer.max_epochs=-1",
            "--knn.every_n_epochs=0",
            "--spectrum.every_n_epochs=0",
            "--online_probe.every_n_epochs=0",
            "--trainer.callbacks=" + json.dumps(record),
            "--output_dir",
            str(tmp_path / "runs"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / "views" / f"views_rank{r}.pt", weights_only=True) for r in range(2)]
    for view in range(2):
        first, second = ranks[0]["views"][view], ranks[1]["views"][view]
        assert first.shape == second.shape == (8, 3, 32, 32)
        assert ((first - second).flatten(1).abs().amax(1) > 0).all()  # every row differs across the ranks
        rows = first.flatten(1)
        assert torch.cdist(rows, rows).add(torch.eye(8)).gt(0).all()  # and within a rank

"""Real DDP: two CPU processes with the gloo backend against one process over the whole batch."""

import socket

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
    "wmse": lambda: (lambda views: WMSELoss(w_size=16, w_iter=2)([v[:, :8] for v in views])),
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
        local = [v[rank * shard:(rank + 1) * shard] for v in views]
        loss = make_loss()([ddp(v) for v in local])["loss"]
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]},
                   f"{out_dir}/{name}_rank{rank}.pt")
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

"""What the tests share: seeding, the tiny quick-start run, and reference implementations that
several test folders check against. Datasets on disk are written by
:mod:`spectral_ssl.data.synthetic` (the same writers the benchmarks use)."""

from pathlib import Path

import pytest
import torch

from spectral_ssl.commands import main
from spectral_ssl.commands.common import THIRD_PARTY_NOTICES, quiet_third_party_notices


def pytest_configure(config):
    """The CLI's filters of other packages' notices, for every test (pytest resets warning filters
    per test, so they go in as its own ``filterwarnings`` lines)."""
    quiet_third_party_notices()
    for category, message in THIRD_PARTY_NOTICES:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


ROOT = Path(__file__).resolve().parents[1]
"""The repository root (configs/, tools/, README.md)."""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """The quick start (digits, INTL, ResNet-18 CIFAR stem) made tiny: width 8, a 64-64 projector."""
    return [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--model.backbone.width=8",
        "--model.projector_dims=[64,64]",
        "--data.batch_size=64",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--spectrum.embedding_map=null",  # the runs' tests; the map's are in tests/evaluation
    ]


@pytest.fixture(scope="session")
def pretrain(tiny):
    """``pretrain(out, *args)``: the tiny run through ``spectral-ssl pretrain`` into ``out/tiny``."""

    def run(out: Path, *args: str) -> Path:
        main(["pretrain", *tiny, "--output_dir", str(out), "--run_name", "tiny", *args])
        return out / "tiny"

    return run


@pytest.fixture(scope="session")
def quickstart_checkpoint(tmp_path_factory) -> Path:
    """The quick start made tiny (width 8, a 64-64 projector) after 2 epochs, the spectrum monitor
    every epoch: the checkpoint the evaluation commands' tests evaluate."""
    out = tmp_path_factory.mktemp("pretrain")
    main(
        [
            "pretrain",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--model.backbone.width=8",
            "--model.projector_dims=[64,64]",
            "--data.batch_size=64",
            "--trainer.max_epochs=2",
            "--spectrum.every_n_epochs=1",
            "--output_dir",
            str(out),
            "--run_name",
            "tiny",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
        ]
    )
    return out / "tiny" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def reference_whitening():
    """IterNorm's output written another way, in float64: with the eigendecomposition
    Sigma_N = V diag(lambda) V^T, P_T = V diag(p_T) V^T by the scalar recurrence
    p_{k+1} = 1.5 p_k - 0.5 p_k^3 lambda, then P_T Xc / sqrt(tr Sigma) (axis 0; axis 1 transposed)."""

    def whiten(z: torch.Tensor, iters: int, eps: float = 0.0, axis: int = 0) -> torch.Tensor:
        z = z.double()
        if axis == 0:
            x = z - z.mean(dim=1, keepdim=True)
            cov = x @ x.T / (z.shape[1] - 1)
        else:
            x = (z - z.mean(dim=0)).T
            cov = x @ x.T / (z.shape[0] - 1)
        cov = (1 - eps) * cov + eps * torch.eye(cov.shape[0], dtype=torch.float64)
        trace = cov.trace()
        lam, vec = torch.linalg.eigh(cov / trace)
        p = torch.ones_like(lam)
        for _ in range(iters):
            p = 1.5 * p - 0.5 * p**3 * lam
        out = vec @ torch.diag(p) @ vec.T @ x / trace.sqrt()
        return out if axis == 0 else out.T

    return whiten


@pytest.fixture(scope="session")
def tied_bank():
    """A kNN bank of integer features (every dot product exact in float32) with many duplicated
    rows of different labels, so the k-th nearest is tied for most queries: (bank, labels, queries)."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randint(-2, 3, (12, 6), generator=generator).float()
    base[base.abs().sum(1) == 0] = 1.0
    bank = base[torch.randint(0, 12, (90,), generator=generator)]
    labels = torch.randint(0, 4, (90,), generator=generator)
    queries = base[torch.randint(0, 12, (25,), generator=generator)] + 0.0
    return bank, labels, queries


@pytest.fixture(scope="session")
def trained_against_initial():
    """``trained_against_initial(cli, batches=4) -> (trained loss, initial loss)``: the method's loss
    on the same first ``batches`` batches of views for the run's trained model and for the same model
    rebuilt from the run's seed (0) before training; train mode (batch statistics, as in training),
    on copies. A paired comparison: other batches each step make logged losses too noisy for a
    slowly moving loss."""
    import copy
    import itertools

    def mean_loss(model, batches) -> float:
        model = copy.deepcopy(model).train()
        with torch.no_grad():
            return sum(float(model.compute_loss(batch[0])["loss"]) for batch in batches) / len(batches)

    def compare(cli, batches: int = 4) -> tuple[float, float]:
        trained = cli.model
        torch.manual_seed(0)  # the run's seed (seed_everything: 0) before the model is built
        initial = type(trained)(**{k: v for k, v in trained.hparams.items() if not k.startswith("_")})
        fixed = list(itertools.islice(cli.datamodule.train_dataloader(), batches))
        return mean_loss(trained, fixed), mean_loss(initial, fixed)

    return compare


@pytest.fixture(scope="session")
def exact_weighted_vote():
    """``vote(bank, labels, queries, k, temperature, num_classes)``: the weighted kNN vote's classes,
    computed another way than :func:`spectral_ssl.evaluation.knn_predict` (see inside)."""

    def vote(bank, labels, queries, k, temperature, num_classes):
        """The weighted vote written another way: float64 cosine scores, the k nearest by a full sort,
        then each class's log of its summed weights, log sum_j exp(s_j / T), as a log-sum-exp (finite
        at any T > 0); the class with the largest wins."""
        import torch.nn.functional as F

        scores = F.normalize(queries.double(), dim=1) @ F.normalize(bank.double(), dim=1).T
        top, index = scores.topk(k, dim=1)
        neighbour_labels = labels[index]
        log_votes = torch.stack(
            [
                torch.where(neighbour_labels == c, top / temperature, float("-inf")).logsumexp(dim=1)
                for c in range(num_classes)
            ],
            dim=1,
        )
        return log_votes.argmax(dim=1)

    return vote

"""What each method learns on real images, at one CPU budget: ``python tools/benchmark.py quality``.

Every method's ``fashion_mnist/<method>_cpu`` config (ResNet-18 at width 16, 28 px, batch 256, bf16 +
channels-last, 4 epochs) is pretrained once per seed on Fashion-MNIST's 60,000 training images, as
users run it (``spectral-ssl pretrain``; monitors off, so the wall time is training alone), then its
backbone features of the clean images are evaluated: kNN top-1 on the 10,000 test images in both
protocols (weighted k = 20, T = 0.07; INTL's 5-NN L2 on raw features), the fast linear probe on cached
features, and the effective rank of the test features. Raw pixels and the random network (the same
architecture at its seeded initialisation) are rows of their own. Each figure is the mean +- std over
the seeds; a paired t-test over the seeds says, for every method against raw pixels and against
INTL, whether the difference could be noise (p >= 0.05). Results go to ``--out`` as Markdown and
CSV, row by row as the runs finish.

    apt-get install dataset-fashion-mnist                      # or torchvision's FashionMNIST download
    python tools/benchmark.py quality [--methods intl simclr ...] [--seeds 0 1 2] [--epochs 4]
        [--root /usr/share/datasets/fashion-mnist] [--out checkpoints/quality] [--quick]

``--quick`` (the test suite's): a generated IDX folder, one method, one seed, one epoch, width 4.
Cost: about 6 minutes a run on 2 CPU cores (5 of training, 1 of evaluation): 7 methods x 3 seeds
is about 2 hours.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

METHODS = ["intl", "st", "barlow_twins", "vicreg", "wmse", "simclr", "byol"]
COLUMNS = ["knn", "knn_l2", "linear", "rank", "seconds"]
HEADERS = {
    "knn": "kNN weighted (k=20)",
    "knn_l2": "5-NN L2 (INTL)",
    "linear": "linear, fast",
    "rank": "eff. rank",
    "seconds": "training, s",
}


def evaluate(train: tuple, test: tuple) -> dict[str, float]:
    """kNN in both protocols, the fast linear probe and the effective rank of (features, labels)."""
    from spectral_ssl.evaluation import PROTOCOLS, covariance_spectrum, effective_rank, knn_accuracy, linear_probe

    return {
        "knn": knn_accuracy(*train, *test, k=20, temperature=0.07),
        "knn_l2": knn_accuracy(*train, *test, **PROTOCOLS["5-NN L2 (INTL)"]),
        "linear": linear_probe(*train, *test, epochs=100),
        "rank": effective_rank(covariance_spectrum(test[0])),
    }


def features(model, data) -> tuple[tuple, tuple]:
    from spectral_ssl.evaluation import extract_features

    train_loader, test_loader = data.knn_dataloaders(1024)
    return extract_features(model, train_loader), extract_features(model, test_loader)


def pixels(data) -> dict[str, float]:
    flat = lambda split: (  # noqa: E731 - the normalised grey pixels, one channel
        ((data.splits[split][0][:, 0].float() / 255 - data.mean[0]) / data.std[0]).flatten(1),
        data.splits[split][1],
    )
    return {**evaluate(flat("train"), flat("test")), "rank": float("nan"), "seconds": 0.0}


def run(method: str, seed: int, args, out: Path) -> tuple[dict, dict]:
    """(the trained backbone's figures, the same backbone's at its seeded initialisation)."""
    from spectral_ssl.commands import pretrain

    flags = [
        "--config", f"fashion_mnist/{method}_cpu", f"--data.init_args.root={args.root}",
        f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--trainer.max_epochs={args.epochs}",
        "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--online_probe.every_n_epochs=0",
        "--trainer.enable_progress_bar=false", "--output_dir", str(out), "--run_name", f"{method}-seed{seed}",
        "--resume=false", "--overwrite=true", *args.extra,
    ]  # fmt: skip
    start = time.perf_counter()
    cli = pretrain(flags)
    seconds = time.perf_counter() - start
    model = cli.model.backbone.float()
    trained = {**evaluate(*features(model, cli.datamodule)), "seconds": seconds}
    torch.manual_seed(seed)  # the run's seed before its model is built: the same initial backbone
    initial = type(cli.model)(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}).backbone
    return trained, {**evaluate(*features(initial, cli.datamodule)), "seconds": 0.0}


PEERS = ("barlow_twins", "vicreg", "simclr", "byol")
"""The methods lightly implements too."""


def recipe(method: str) -> dict:
    """The composed ``fashion_mnist/<method>_cpu`` config (base, method, cpu.yaml merged)."""
    import yaml

    from spectral_ssl.commands.common import resolve_config

    def merged(a: dict, b: dict) -> dict:
        out = dict(a)
        for key, value in b.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    config: dict = {}
    for part in resolve_config(f"fashion_mnist/{method}_cpu"):
        config = merged(config, yaml.safe_load(Path(part).read_text()))
    return config


def lightly_run(method: str, seed: int, args, data) -> dict:
    """The same recipe through lightly's implementation, as its examples train: its projection heads
    (BYOL's predictor, its cosine momentum and ``update_momentum``), its loss, its LARS (the
    recipe's lr x batch / 256, weight decay, trust coefficient) and ``CosineWarmupScheduler`` (the
    recipe's warm-up), its two-view transforms (``BYOLView1Transform`` / ``View2``: the recipe's 28 px
    crops from 0.2, brightness and contrast jitter, view 2 solarized, no blur), on the same backbone
    (ResNet-18 at width 16, CIFAR stem), batch, epochs and seed, in a LightningModule fed by a
    DataLoader of PIL images with 2 workers, fp32 (lightly's examples). Returns the backbone's figures
    and the training's wall time."""
    import lightning as L
    from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
    from lightly.models.modules import (
        BarlowTwinsProjectionHead,
        BYOLPredictionHead,
        BYOLProjectionHead,
        SimCLRProjectionHead,
    )
    from lightly.models.modules.heads import VICRegProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule
    from PIL import Image

    from spectral_ssl.models import create_backbone

    config = recipe(method)
    model_args, batch = config["model"]["init_args"], config["data"]["init_args"]["batch_size"]
    dims, optimizer_args = model_args["projector_dims"], model_args["optimizer"]
    L.seed_everything(seed)
    channels = getattr(args, "width", None) or model_args["backbone"]["width"]
    backbone = create_backbone("resnet18", cifar_stem=True, width=channels, cifar_stem_padding=2)
    width = backbone.feature_dim
    heads = {  # made on demand: each reads its own settings
        "barlow_twins": lambda: (
            BarlowTwinsProjectionHead(width, dims[0], dims[-1]),
            BarlowTwinsLoss(model_args["lambd"]),
        ),
        "vicreg": lambda: (VICRegProjectionHead(width, dims[0], dims[-1]), VICRegLoss()),
        "simclr": lambda: (
            SimCLRProjectionHead(width, dims[0], dims[-1]),
            NTXentLoss(temperature=model_args["temperature"]),
        ),
        "byol": lambda: (BYOLProjectionHead(width, dims[0], dims[-1]), NegativeCosineSimilarity()),
    }
    head, criterion = heads[method]()
    normalize = {"mean": list(data.mean), "std": list(data.std)}
    common = dict(input_size=28, min_scale=0.2, cj_sat=0.0, cj_hue=0.0, gaussian_blur=0.0, normalize=normalize)
    views = BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common, solarization_prob=0.2))
    images = data.splits["train"][0][:, 0].numpy()

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return views(Image.fromarray(images[i]).convert("RGB")), 0

    loader = torch.utils.data.DataLoader(
        Dataset(), batch_size=batch, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True
    )
    steps = len(loader) * args.epochs

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, head
            if method == "byol":
                import copy

                self.predictor = BYOLPredictionHead(dims[-1], model_args["predictor_hidden_dims"][0], dims[-1])
                self.target = torch.nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(head)).requires_grad_(False)

        def training_step(self, batch, index):
            x0, x1 = batch[0]
            z0, z1 = self.head(self.backbone(x0)), self.head(self.backbone(x1))
            if method != "byol":
                return criterion(z0, z1)
            momentum = cosine_schedule(self.global_step, steps, model_args["base_momentum"], 1.0)
            update_momentum(torch.nn.Sequential(self.backbone, self.head), self.target, m=momentum)
            with torch.no_grad():
                t0, t1 = self.target(x0), self.target(x1)
            return 0.5 * (criterion(self.predictor(z0), t1) + criterion(self.predictor(z1), t0))

        def configure_optimizers(self):
            lr = optimizer_args["lr"] * batch / 256
            optimizer = LARS(self.parameters(), lr=lr, momentum=0.9, weight_decay=optimizer_args["weight_decay"],
                             trust_coefficient=optimizer_args.get("trust_coeff", 0.001))  # fmt: skip
            warmup = round(optimizer_args["warmup_epochs"] * len(loader))
            scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup, max_epochs=steps)
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    module = Module()
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    return {**evaluate(*features(module.backbone.float(), data)), "seconds": seconds}


def mean_std(values: list[float], percent: bool) -> str:
    scale = 100 if percent else 1
    if any(math.isnan(v) for v in values):
        return "-"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.2f} +- {std:.2f}" if percent else f"{mean:.1f} +- {std:.1f}"


def paired(a: list[float], b: list[float]) -> str:
    """A paired t-test of a against b over the seeds: 'a > b', 'a < b' (p < 0.05) or 'noise'."""
    if len(a) < 2 or len(a) != len(b):
        return "-"
    from scipy import stats

    differences = [x - y for x, y in zip(a, b)]
    if all(d == differences[0] for d in differences):  # a constant difference: no variance to test
        return "noise" if differences[0] == 0 else ("higher" if differences[0] > 0 else "lower")
    p = stats.ttest_rel(a, b).pvalue
    if p >= 0.05:
        return f"noise (p = {p:.2f})"
    return f"{'higher' if statistics.fmean(differences) > 0 else 'lower'} (p = {p:.3f})"


def table(rows: dict[str, list[dict]], args) -> str:
    lines = [
        *(f"{note}\n" for note in getattr(args, "notes", [])),
        f"Fashion-MNIST, `fashion_mnist/<method>_cpu` ({args.epochs} epochs, ResNet-18 width 16, batch 256), seeds "
        f"{', '.join(map(str, args.seeds))}; top-1 on the 10,000 test images, mean +- std over the seeds; the last "
        "two columns: a paired t-test of the weighted kNN over the seeds against raw pixels and against INTL.",
        "",
        "| row | " + " | ".join(HEADERS[c] for c in COLUMNS) + " | vs raw pixels | vs INTL |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    pixels_knn = [r["knn"] for r in rows.get("raw pixels", [])]
    intl_knn = [r["knn"] for r in rows.get("intl", [])]
    for name, results in rows.items():
        cells = [mean_std([r[c] for r in results], percent=c in ("knn", "knn_l2", "linear")) for c in COLUMNS]
        knn = [r["knn"] for r in results]
        versus = [
            paired(knn, reference) if name != other and len(reference) == len(knn) else "-"
            for other, reference in (("raw pixels", pixels_knn), ("intl", intl_knn))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {versus[0]} | {versus[1]} |")
    return "\n".join(lines)


def write(rows: dict[str, list[dict]], args) -> str:
    text = table(rows, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text(text + "\n")
    with open(args.out / "quality.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "seed", *COLUMNS])
        for name, results in rows.items():
            for seed, result in zip(args.seeds, results):
                writer.writerow([name, seed, *(result[c] for c in COLUMNS)])
    return text


def finished(args) -> dict[tuple[str, int], dict]:
    """The rows of an earlier invocation into the same ``--out`` (its quality.csv): not run again, so
    a killed benchmark continues, and ``--peer`` later adds lightly's rows beside ours."""
    path = args.out / "quality.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(r["row"], int(r["seed"])): {c: float(r[c]) for c in COLUMNS} for r in csv.DictReader(f)}


def run_quality(args) -> str:
    from peers_benchmark import lightly_available
    from spectral_ssl.data import MNISTDataModule

    if args.quick:
        from spectral_ssl.data.synthetic import write_idx_folder

        args.root = Path(tempfile.mkdtemp()) / "fashion"
        write_idx_folder(args.root, train_images=600, test_images=200, gzipped=True)
        args.methods, args.seeds, args.epochs, args.width = args.methods[:1], args.seeds[:1], 1, 4
        args.extra = [*args.extra, "--model.backbone.width=4", "--model.projector_dims=[64,64,64]"]
    if args.peer and not lightly_available():
        install = "pip install -c requirements-lock.txt -e '.[bench]'"
        args.notes = [f"lightly is not installed ({install}): the peer's rows are skipped; ours alone follow."]
        args.peer = False
    data = MNISTDataModule(root=str(args.root))
    data.setup("fit")
    done = finished(args)
    rows: dict[str, list[dict]] = {"raw pixels": [pixels(data)] * len(args.seeds), "random network": []}
    runs = args.out / "runs"
    for method in args.methods:
        rows[method] = []
        for seed in args.seeds:
            if (method, seed) in done and (method != args.methods[0] or ("random network", seed) in done):
                rows[method].append(done[(method, seed)])
                if method == args.methods[0]:
                    rows["random network"].append(done[("random network", seed)])
                continue
            trained, initial = run(method, seed, args, runs)
            rows[method].append(trained)
            if method == args.methods[0]:  # the random network: the first method's backbone at its initialisation
                rows["random network"].append(initial)
            print(write(rows, args), flush=True)
        if args.peer and method in PEERS:  # lightly's, beside ours, on the same seeds
            name = f"{method}, lightly"
            rows[name] = []
            for seed in args.seeds:
                rows[name].append(done.get((name, seed)) or lightly_run(method, seed, args, data))
                print(write(rows, args), flush=True)
    return write(rows, args)

"""Pretrain the quick-start setting once per method, same budget, and tabulate the results.

    python tools/method_table.py [--epochs 25] [--methods intl st barlow_twins vicreg wmse simclr byol
                                                            barlow_twins_lars]
                                 [--out checkpoints/method_table]

Every method runs ``spectral-ssl pretrain --config configs/quickstart.yaml`` (CIFAR-stem
ResNet-18 at width 16, digits, batch 128, SGD lr 0.6 with warm-up + cosine, 25 epochs) with only
what the method itself needs changed (below). Reports kNN top-1 on the 360 held-out digits in
both protocols, the fast linear top-1 on cached features, the effective rank of the backbone
features and the wall time; writes ``method_table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from spectral_ssl.commands import pretrain  # noqa: E402
from spectral_ssl.evaluation import KNNMonitor, covariance_spectrum, effective_rank, extract_features, linear_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name: (class, what the method needs beyond the shared quick-start settings)
    "intl": ("INTL", []),
    "st": ("SpectralTransform", ["--model.power=-0.5", "--model.axis=1", "--model.eps=1e-5"]),
    "barlow_twins": ("BarlowTwins", []),
    "vicreg": ("VICReg", []),
    "wmse": (
        "WMSE",
        [
            "--model.projector_dims=[1024,64]",
            "--model.w_size=128",
            "--model.optimizer.name=adam",
            "--model.optimizer.lr=0.003",
            "--model.optimizer.weight_decay=1e-6",
        ],
    ),
    "simclr": ("SimCLR", ["--model.temperature=0.2"]),
    "byol": ("BYOL", ["--model.projector_dims=[1024,256]", "--model.predictor_hidden_dims=[1024]"]),
    # the optimizer its papers use (not in the default list: not the shared budget)
    "barlow_twins_lars": (
        "BarlowTwins",
        ["--model.optimizer.name=lars", "--model.optimizer.lr=0.3", "--model.optimizer.exclude_bias_and_norm=true"],
    ),
}
DEFAULT = ["intl", "st", "barlow_twins", "vicreg", "wmse", "simclr", "byol"]


def run(name: str, epochs: int, out: Path) -> dict:
    cls, extra = METHODS[name]
    args = [
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--output_dir",
        str(out),
        "--run_name",
        name,
        "--resume=false",
        "--overwrite=true",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        f"--model=spectral_ssl.methods.{cls}",
        *extra,
    ]
    start = time.time()
    cli = pretrain(args)
    seconds = time.time() - start
    monitor = cli.callback(KNNMonitor)
    bank_loader, test_loader = cli.datamodule.knn_dataloaders()
    train, test = extract_features(cli.model.backbone, bank_loader), extract_features(cli.model.backbone, test_loader)
    return {
        "method": cls,
        "args": " ".join(extra),
        "knn": monitor.results["trained"],
        "knn_l2": monitor.results_l2["trained"],
        "linear": linear_probe(*train, *test, epochs=100),
        "rank": effective_rank(covariance_spectrum(test[0])),
        "width": test[0].shape[1],
        "seconds": seconds,
    }


def write_table(rows: list[dict], epochs: int, out: Path) -> str:
    lines = [
        f"Quick-start pretraining on digits per method ({epochs} epochs, CIFAR-stem ResNet-18 at width 16, batch 128); "
        "top-1 on the 360 held-out images.",
        "",
        "| method | kNN weighted (k=20, T=0.07) | 5-NN L2 (INTL protocol) | linear, fast (cached features) "
        "| eff. rank, backbone features | wall time | method-specific settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['knn']:.2f}% | {100 * r['knn_l2']:.2f}% | {100 * r['linear']:.2f}% "
            f"| {r['rank']:.1f} / {r['width']} | {r['seconds']:.0f} s | {r['args'] or '-'} |"
        )
    lines += ["", f"Command: `python tools/method_table.py --epochs {epochs}`"]
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "method_table.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--methods", nargs="+", default=DEFAULT, choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "method_table")
    args = parser.parse_args()
    rows = []
    for name in args.methods:
        rows.append(run(name, args.epochs, args.out))
        print(write_table(rows, args.epochs, args.out), flush=True)


if __name__ == "__main__":
    main()

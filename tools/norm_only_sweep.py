"""Train only the normalization parameters, or everything, per norm layer, on the built-in digits.

    python tools/norm_only_sweep.py [--epochs 10] [--norms bn ln pln lng] [--out checkpoints/norm_only_sweep]

For each norm and each of ``trainable=all`` / ``trainable=norm_only``: INTL pretraining of the
quick-start setting, then kNN top-1 and fast linear top-1 (a linear classifier on the frozen,
cached backbone features) on the held-out images; and the supervised reference run (same
backbone, labels) with its held-out top-1. In ``norm_only`` every weight but the norm layers'
stays at its seeded random initialization — also the projector / classifier. Writes
``norm_only_sweep.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from spectral_ssl.commands import pretrain, supervised  # noqa: E402
from spectral_ssl.evaluation import KNNMonitor, extract_features, linear_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def common(config: str, norm: str, mode: str, epochs: int, out: Path, prefix: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / config),
        "--output_dir",
        str(out),
        "--run_name",
        f"{prefix}_{norm}_{mode}",
        "--resume=false",
        "--overwrite=true",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        f"--model.backbone.norm={norm}",
        f"--model.trainable={mode}",
    ]


def run(norm: str, mode: str, epochs: int, out: Path) -> dict:
    cli = pretrain(common("quickstart.yaml", norm, mode, epochs, out, "intl"))
    monitor = cli.callback(KNNMonitor)
    bank_loader, test_loader = cli.datamodule.knn_dataloaders()
    train_x, train_y = extract_features(cli.model.backbone, bank_loader)
    test_x, test_y = extract_features(cli.model.backbone, test_loader)
    reference = supervised(common("supervised_digits.yaml", norm, mode, epochs, out, "supervised"))
    return {
        "norm": norm,
        "mode": mode,
        "knn": monitor.results["trained"],
        "random": monitor.results["random init"],
        "linear": linear_probe(train_x, train_y, test_x, test_y),
        "supervised": reference.test_top1,
        "trainable": cli.model.num_trainable,
        "total": cli.model.num_parameters,
        "trainable_supervised": reference.model.num_trainable,
    }


def table(rows: list[dict], epochs: int) -> str:
    lines = [
        f"Digits, CIFAR-stem ResNet-18 at width 16, {epochs} epochs each; top-1 on the 360 held-out images. "
        "INTL: kNN (cosine, k=20, T=0.07) and linear (on frozen cached backbone features) after pretraining; "
        "supervised: the same backbone trained with labels.",
        "",
        "| norm | trainable | INTL params trained | INTL kNN | INTL linear | kNN at random init | supervised params trained | supervised top-1 |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['norm']} | {r['mode']} | {r['trainable']:,} of {r['total']:,} | {100 * r['knn']:.2f}% | "
            f"{100 * r['linear']:.2f}% | {100 * r['random']:.2f}% | {r['trainable_supervised']:,} | "
            f"{100 * r['supervised']:.2f}% |"
        )
    lines += ["", f"Command: `python tools/norm_only_sweep.py --epochs {epochs}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--norms", nargs="+", default=["bn", "ln", "pln", "lng"])
    parser.add_argument("--modes", nargs="+", default=["all", "norm_only"])
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "norm_only_sweep")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for norm in options.norms:
        for mode in options.modes:
            rows.append(run(norm, mode, options.epochs, options.out))
            text = table(rows, options.epochs)
            (options.out / "norm_only_sweep.md").write_text(text + "\n")
            print(text, flush=True)


if __name__ == "__main__":
    main()

"""Experiment 6, PLN in transformers (PLN paper, Sec. 5: replacing LN by PLN in a transformer
helps): a small Vision Transformer (timm's, 4 blocks, 64 wide, 4 heads, 16 patches of 4 x 4 on
the 16 px digits, class token) with LN, PLN-8, LN-G (4 groups) or RMSNorm in every norm slot,

- supervised on the digits (``spectral-ssl supervised``): held-out top-1;
- INTL-pretrained on the digits (``spectral-ssl pretrain``, the ViT quick start's recipe): kNN
  (cosine, k = 20) and fast linear top-1 on the held-out images;

each norm on the same seeds, and each compared with LN seed by seed (paired: the same seed gives
the same data order and the same initialisation of everything but the norms): the mean
difference, its 95% bootstrap interval and the paired t-test, reported as noise when the
interval contains 0. Runs go through the product's own commands with the monitors it ships.
"""

from __future__ import annotations

from pathlib import Path

from ..report import Experiment, formatted, markdown_table, paired_difference
from .common import bar_plot, command_arguments, in_processes

NORMS = {"LN": "ln", "PLN-8": "pln", "LN-G-4": "lng", "RMSNorm": "rms"}
VIT = [
    "--model.backbone.name=vit_tiny",
    "--model.backbone.embed_dim=64",
    "--model.backbone.depth=4",
    "--model.backbone.num_heads=4",
    "--model.backbone.patch_size=4",
]


def _common(config: str, run_name: str, out: Path, norm: str, seed: int, epochs: int) -> list[str]:
    return [*command_arguments(config, out, run_name, seed, epochs), *VIT, f"--model.backbone.norm={norm}"]


def supervised_top1(out: Path, norm: str, seed: int, epochs: int) -> float:
    from ...commands import supervised

    args = [
        *_common("supervised_digits", f"supervised_{norm}_seed{seed}", out, norm, seed, epochs),
        *("--model.optimizer.name=adamw", "--model.optimizer.lr=5e-3", "--model.optimizer.weight_decay=0.05"),
        *("--model.optimizer.exclude_bias_and_norm=true", "--knn.every_n_epochs=0"),
    ]
    return supervised(args).test_top1


def intl_top1(out: Path, norm: str, seed: int, epochs: int) -> tuple[float, float]:
    """(kNN top-1, fast linear top-1) on the held-out digits after INTL pretraining."""
    from ...commands import pretrain
    from ...evaluation import KNNMonitor, extract_features, linear_probe

    args = [
        *_common("quickstart_vit", f"intl_{norm}_seed{seed}", out, norm, seed, epochs),
        "--model.projector_dims=[512,512,512]",
        *("--knn.baselines=false", "--spectrum.every_n_epochs=0", "--online_probe.every_n_epochs=0"),
        f"--knn.every_n_epochs={max(epochs, 1)}",
    ]
    cli = pretrain(args)
    bank, queries = cli.datamodule.knn_dataloaders()
    train = extract_features(cli.model.backbone, bank)
    test = extract_features(cli.model.backbone, queries)
    return cli.callback(KNNMonitor).results["trained"], linear_probe(*train, *test, seed=seed)


def train_pair(out: Path, norm: str, seed: int, epochs: int) -> dict:
    """One norm and seed: the INTL run (kNN, linear) and the supervised run."""
    knn, linear = intl_top1(out, norm, seed, epochs)
    return {"supervised": supervised_top1(out, norm, seed, epochs), "intl_knn": knn, "intl_linear": linear}


def run(out: Path, seeds: list[int], quick: bool, jobs: int = 1) -> str:
    epochs = 0 if quick else 15
    norms = {"LN": "ln", "PLN-8": "pln"} if quick else NORMS
    experiment = Experiment("transformers", out, seeds)
    configurations = [(name, norm, seed) for name, norm in norms.items() for seed in seeds]
    work = [(out, norm, seed, epochs) for _, norm, seed in configurations]
    for (name, _, seed), measured in zip(configurations, in_processes(train_pair, work, jobs), strict=True):
        experiment.record(norm=name, seed=seed, **measured)
    metrics = {"supervised": "supervised", "intl_knn": "INTL kNN", "intl_linear": "INTL linear"}
    summary = experiment.summarize(["norm"], list(metrics))
    rows = [[r["norm"], *(formatted(r[f"{m}_mean"], r[f"{m}_std"], 2, percent=True) for m in metrics)] for r in summary]
    by_norm = {name: [r for r in experiment.rows if r["norm"] == name] for name in norms}
    comparisons = []
    for name in list(norms)[1:]:
        for metric, label in metrics.items():
            if len(seeds) > 1:
                difference = paired_difference([r[metric] for r in by_norm["LN"]], [r[metric] for r in by_norm[name]])
                comparisons.append([name, label, str(difference)])
    lines = [
        f"## Norms in a small ViT (4 x 64, 4 heads, patch 4) on the digits, {epochs or 'quick: 2 batches'} epochs each",
        "",
        "Held-out top-1 (360 images): supervised (AdamW lr 5e-3, wd 0.05); INTL (the ViT quick start's "
        "recipe, projector 512-512-512) then kNN (cosine, k = 20, T = 0.07) and fast linear on frozen features.",
        "",
        *markdown_table(["norm", *metrics.values()], rows),
        "",
        "Paired against LN (same seeds): mean difference in top-1 (fraction), 95% bootstrap interval, paired "
        "t-test; a difference counts only when the interval excludes 0 and p < 0.05.",
        "",
        *markdown_table(["norm", "measure", "minus LN"], comparisons),
    ]
    experiment.save_figure(bar_plot(summary, "norm", metrics, title="small ViT on the digits", ylabel="top-1"), "top1")
    return experiment.write_markdown(lines)

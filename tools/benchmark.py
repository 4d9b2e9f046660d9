"""Speed benchmarks, measured side by side in one run (never asserted in tests).

    python tools/benchmark.py iternorm [--sizes 256x8192 1024x8192 ...] [--out table.md]

``iternorm``: IterNorm whitening + trace loss, forward and backward for two views, in the D x D
("feature") and N x N ("batch") forms of feature whitening (``axis=1``), which give the same
output; the ratio is the speed-up of the batch form. Also reports the share of one training step
(backbone + projector + INTL loss, two views) that the whitening takes in each form. Sizes default
to the GPU set of issue #5 on CUDA and to smaller ones on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from spectral_ssl.losses import INTLLoss  # noqa: E402
from spectral_ssl.models import create_backbone, Projector  # noqa: E402

GPU_SIZES = ["256x8192", "1024x8192", "4096x8192", "512x2048"]
CPU_SIZES = ["64x2048", "256x2048", "1024x2048", "256x512"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_ms(fn, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def whitening_step(n: int, d: int, form: str, device: torch.device):
    """Two views -> INTL loss (axis=1 feature whitening) -> backward."""
    views = [torch.randn(n, d, device=device, requires_grad=True) for _ in range(2)]
    loss = INTLLoss(axis=1, form=form, gather=False)

    def step():
        for v in views:
            v.grad = None
        loss(views)["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def model_step(arch: str, batch: int, image: int, dim: int, device: torch.device, bf16: bool):
    """One two-view training step of backbone + projector + INTL loss (forward + backward)."""
    backbone = create_backbone(arch, cifar_stem=image <= 64).to(device)
    projector = Projector(backbone.num_features, [dim, dim], dim).to(device)
    loss = INTLLoss(axis=1, gather=False)
    images = [torch.randn(batch, 3, image, image, device=device) for _ in range(2)]
    if device.type == "cuda":
        backbone, images = backbone.to(memory_format=torch.channels_last), [x.to(memory_format=torch.channels_last) for x in images]

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss([projector(backbone(x)) for x in images])["loss"]
        value.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def run_iternorm(args) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = args.sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    min_time = 1.0 if device.type == "cuda" else 0.2
    if device.type == "cuda":
        arch, batch, image, dim = "resnet50", 128, 224, 8192
    else:
        arch, batch, image, dim = "resnet18", 64, 32, 2048
    bf16 = device.type == "cuda"  # CPUs without bf16 matrix units run it far slower than fp32
    reference = time_ms(model_step(arch, batch, image, dim, device, bf16=bf16), min_time)
    rows = [
        f"IterNorm + trace loss, forward + backward, two views, T=4, feature whitening (axis=1); "
        f"{device_name(device)}, torch {torch.__version__}, {datetime.date.today()}",
        "",
        f"Reference step: {arch} {'' if image > 64 else 'CIFAR-stem '}{image}px, 2 x {batch} images, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, "
        f"{dim}-d projector, INTL loss: **{reference:.1f} ms**",
        "",
        "| batch x dim | D x D form (ms) | N x N form (ms) | speed-up | share of step, D x D | share of step, N x N |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        n, d = map(int, size.split("x"))
        feature = time_ms(whitening_step(n, d, "feature", device), min_time)
        batch_form = time_ms(whitening_step(n, d, "batch", device), min_time)
        rows.append(f"| {n} x {d} | {feature:.1f} | {batch_form:.1f} | {feature / batch_form:.1f}x "
                    f"| {100 * feature / reference:.0f}% | {100 * batch_form / reference:.1f}% |")
        print(rows[-1], flush=True)
    rows.append("")
    rows.append("Shares compare the whitening alone (at each size) with the reference step above. "
                f"Command: `python tools/benchmark.py iternorm{' --sizes ' + ' '.join(args.sizes) if args.sizes else ''}`")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    iternorm = sub.add_parser("iternorm", help="IterNorm in its D x D and N x N forms")
    iternorm.add_argument("--sizes", nargs="+", help="batch x dim pairs such as 256x8192")
    iternorm.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    table = run_iternorm(args)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()

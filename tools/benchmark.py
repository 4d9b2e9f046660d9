"""Speed benchmarks, measured side by side in one run (never asserted in tests).

    python tools/benchmark.py iternorm [--sizes 256x8192 1024x8192 ...] [--out table.md]
    python tools/benchmark.py pipeline [--batch 512] [--steps 20] [--workers 16] [--out table.md]

``pipeline``: one CIFAR-10 ResNet-18 INTL training step (two views, 2048-d projector, SGD) fed
three ways, side by side: (1) model only, random tensors already on the device; (2) our data
path, the uint8 set resident on the device and both views made there by
:class:`BatchAugmentation`; (3) a plain torchvision PIL pipeline (RandomResizedCrop, ColorJitter,
grayscale, flip, ToTensor, Normalize) in DataLoader workers. It prints images/s, seconds per
50,000-image epoch and the ratios (2)/(1) and (3)/(2).

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


def training_step(batch: int, device: torch.device, bf16: bool, channels_last: bool, width: int):
    """A closure (views -> forward, INTL loss, backward, SGD step) of a CIFAR ResNet-18."""
    backbone = create_backbone("resnet18", cifar_stem=True, width=width).to(device)
    projector = Projector(backbone.num_features, [2048, 2048], 2048).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    params = [*backbone.parameters(), *projector.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, fused=device.type == "cuda" or None)
    loss = INTLLoss(gather=False)

    def step(views):
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss([projector(backbone(v)) for v in views])["loss"]
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(batches, step, device, steps: int, warmup: int = 3) -> float:
    import time

    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(iterator))
    _sync(device)
    return (time.perf_counter() - start) / steps


def run_pipeline(args) -> str:
    import itertools

    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from spectral_ssl.data.device_augment import BatchAugmentation
    from spectral_ssl.data.tensor_sets import CIFAR_AUGMENTATION, CIFARDataModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    batch, steps = args.batch or (512 if gpu else 64), args.steps or (20 if gpu else 3)
    width = args.width or 64
    mean, std = CIFARDataModule.STATS[10]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    step = training_step(batch, device, bf16=gpu, channels_last=gpu, width=width)

    model_views = [torch.randn(batch, 3, 32, 32, device=device) for _ in range(2)]
    model_only = seconds_per_step(itertools.repeat(model_views), step, device, steps)

    resident = images.to(device)
    augments = [BatchAugmentation(recipe, mean, std).to(device) for recipe in CIFAR_AUGMENTATION]
    device_generator = torch.Generator(device).manual_seed(0)

    def device_batches():
        while True:
            for index in torch.randperm(len(resident), device=device).split(batch):
                if len(index) == batch:
                    chosen = resident[index]
                    yield [augment(chosen, device_generator) for augment in augments]

    ours = seconds_per_step(device_batches(), step, device, steps)
    ours_data = seconds_per_step(device_batches(), lambda views: None, device, 2 * steps)

    class PILViews(Dataset):
        def __init__(self):
            self.pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
            normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
            self.views = [transforms.Compose([
                transforms.RandomResizedCrop(32, scale=(0.08, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                transforms.RandomGrayscale(0.2), transforms.RandomSolarize(128, p=p), transforms.RandomHorizontalFlip(),
                *normalize]) for p in (0.0, 0.2)]

        def __len__(self):
            return len(self.pil)

        def __getitem__(self, i):
            return [view(self.pil[i]) for view in self.views]

    loader = DataLoader(PILViews(), batch_size=batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        pin_memory=gpu, persistent_workers=args.workers > 0)

    def pil_batches():
        while True:
            for views in loader:
                yield [v.to(device, non_blocking=True) for v in views]

    pil = seconds_per_step(pil_batches(), step, device, steps)
    pil_data = seconds_per_step(pil_batches(), lambda views: None, device, 2 * steps)
    epoch = 50_000 / batch
    rows = [
        f"CIFAR-10 ResNet-18 (width {width}) INTL step, two views of {batch} images, "
        f"{'bf16 + channels_last' if gpu else 'fp32'}, SGD; {device_name(device)}, torch {torch.__version__}, "
        f"{datetime.date.today()}",
        "",
        "| pipeline | ms / step | images / s | s / CIFAR-10 epoch | data alone, ms / batch of two views |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, data in (("(1) model only (random tensors on the device)", model_only, 0.0),
                                ("(2) ours: uint8 set on the device, batched augmentation there", ours, ours_data),
                                (f"(3) torchvision PIL + DataLoader ({args.workers} workers)", pil, pil_data)):
        rows.append(f"| {name} | {1e3 * seconds:.1f} | {batch / seconds:,.0f} | {epoch * seconds:.2f} "
                    f"| {1e3 * data:.1f} |")
    command = " ".join(sys.argv[1:])
    rows += ["", f"(2)/(1) = {ours / model_only:.2f}x the model-only time; (3)/(2) = {pil / ours:.2f}x slower "
             f"than ours; data alone: (3)/(2) = {pil_data / ours_data:.1f}x. Command: `python tools/benchmark.py {command}`"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    iternorm = sub.add_parser("iternorm", help="IterNorm in its D x D and N x N forms")
    iternorm.add_argument("--sizes", nargs="+", help="batch x dim pairs such as 256x8192")
    iternorm.add_argument("--out", type=Path, help="also write the markdown table here")
    pipeline = sub.add_parser("pipeline", help="model-only vs our data path vs a torchvision PIL pipeline")
    pipeline.add_argument("--batch", type=int, help="images per view (512 on CUDA, 64 on the CPU)")
    pipeline.add_argument("--steps", type=int, help="timed steps (20 on CUDA, 3 on the CPU)")
    pipeline.add_argument("--width", type=int, help="ResNet width (64, the real ResNet-18)")
    pipeline.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL pipeline")
    pipeline.add_argument("--images", type=int, default=50_000, help="size of the generated CIFAR-sized set")
    pipeline.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    table = run_iternorm(args) if args.benchmark == "iternorm" else run_pipeline(args)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()

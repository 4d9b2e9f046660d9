"""Speed benchmarks, measured side by side in one run (never asserted in tests).

    python tools/benchmark.py iternorm [--sizes 256x8192 1024x8192 ...] [--out table.md]
    python tools/benchmark.py pipeline [--shapes cifar imagenet] [--workers 16] [--out table.md]
    python tools/benchmark.py scale [--quick] [--out table.md]
    python tools/benchmark.py backbones [--batch N] [--out table.md]
    python tools/benchmark.py peers [--quick] [--no-peer] [--out table.md]
    python tools/benchmark.py quality [--methods ...] [--seeds 0 1 2] [--epochs 4] [--quick] [--out folder]

``quality``: every method's kNN (both protocols), fast linear top-1 and effective rank on
Fashion-MNIST at one CPU budget, seeds, mean +- std and paired tests, beside raw pixels and the
random network (see ``tools/quality_benchmark.py``).

``peers``: lightly's documented Barlow Twins pipeline and ours side by side in one process tree
(data path per image and per batch at 0 and 2 workers, model step, training images/s, peak memory);
lightly comes from the ``[bench]`` extra and is skipped, with a line saying so, when absent (see
``tools/peers_benchmark.py``).

``backbones``: parameters, forward FLOPs per image (torch's FlopCounterMode) and the step time of
ResNet-18/50 and ViT-Tiny/Small at 32 and 224 px side by side, and a ViT-Small's norm choices (LN,
RMSNorm, PLN, PLS, LN-G, PLN also as the activation) as ratios to LN measured in the same run.

``scale``: what each part of a run costs as the dataset grows, extrapolated to ImageNet-1k and
-21k (see ``tools/scale_benchmark.py``).

``pipeline``: an INTL training step (two views, 3-layer projector, SGD) of two shapes, CIFAR-10
(ResNet-18, CIFAR stem, 32 px) and ImageNet (ResNet-50, 224 px, from JPEG files), fed three ways
side by side: (1) model only, random tensors already on the device; (2) ours, ``Trainer.fit`` of
the INTL module on the real datamodule with ``augment_on_device`` (CIFAR: the uint8 set resident on
the device; ImageNet: workers read the files, the batch is decoded and augmented on the device);
(3) a plain torchvision PIL pipeline (the same recipes with torchvision.transforms) in DataLoader
workers. The data are generated at the real sizes (CIFAR pickles, JPEG files of 300-500 px). On
CUDA the step is bf16 + channels_last + torch.compile + one CUDA graph (``--no-compile`` to skip
compilation). It prints ms/step, images/s, seconds per epoch, the ratios (2)/(1) and (3)/(2) and,
for (2), how many times per step the host waited for the device.

``iternorm``: IterNorm whitening + trace loss, forward and backward for two views, in the D x D
("feature") and N x N ("batch") forms of feature whitening (``axis=1``), which give the same
output; the ratio is the speed-up of the batch form. Also reports the share of one training step
(backbone + projector + INTL loss, two views) that the whitening takes in each form. Sizes default
to the GPU set of issue #5 on CUDA and to smaller ones on the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from spectral_ssl.losses import INTLLoss  # noqa: E402
from spectral_ssl.models import Projector, create_backbone  # noqa: E402

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
    projector = Projector(backbone.feature_dim, [dim, dim], dim).to(device)
    loss = INTLLoss(axis=1, gather=False)
    images = [torch.randn(batch, 3, image, image, device=device) for _ in range(2)]
    if device.type == "cuda":
        backbone, images = (
            backbone.to(memory_format=torch.channels_last),
            [x.to(memory_format=torch.channels_last) for x in images],
        )

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
        rows.append(
            f"| {n} x {d} | {feature:.1f} | {batch_form:.1f} | {feature / batch_form:.1f}x "
            f"| {100 * feature / reference:.0f}% | {100 * batch_form / reference:.1f}% |"
        )
        print(rows[-1], flush=True)
    rows.append("")
    rows.append(
        "Shares compare the whitening alone (at each size) with the reference step above. "
        f"Command: `python tools/benchmark.py iternorm{' --sizes ' + ' '.join(args.sizes) if args.sizes else ''}`"
    )
    return "\n".join(rows)


SHAPES = {  # (architecture, image size, projector width on CUDA / on the CPU, images per epoch)
    "cifar": ("resnet18", 32, (2048, 2048), 50_000),
    "imagenet": ("resnet50", 224, (8192, 2048), 1_281_167),
}


def intl_model(shape: str, dim: int):
    """The INTL LightningModule of that shape (CIFAR stem for 32 px)."""
    from spectral_ssl.methods import INTL

    arch, image, _, _ = SHAPES[shape]
    return INTL(backbone={"name": arch, "cifar_stem": image <= 64}, projector_dims=[dim] * 3)


def speed_options(device: torch.device, compile: bool, graph: bool):
    from spectral_ssl.engine import SpeedOptions

    return SpeedOptions(channels_last=device.type == "cuda", compile=compile, cuda_graph=graph)


def training_step(model, speed, device: torch.device, bf16: bool):
    """views -> forward, INTL loss, backward, SGD step of ``model``, outside Lightning: eager, or
    captured as one CUDA graph by the same :class:`GraphedStep` the training path uses."""
    from spectral_ssl.engine import GraphedStep

    model.to(device)
    for callback in speed.callbacks():
        callback.setup(None, model, "fit")
    graph = speed.cuda_graph
    lr = torch.tensor(0.01, device=device) if graph else 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=device.type == "cuda" or None)

    def step(views):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graph):
            parts = model.compute_loss(views)
        parts["loss"].backward()
        optimizer.step()
        return parts

    zero_grad = lambda: optimizer.zero_grad(set_to_none=True)  # noqa: E731
    if graph:
        return GraphedStep(step, zero_grad)
    return lambda views: (zero_grad(), step(views))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(batches, step, device, steps: int, warmup: int = 5) -> float:
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(iterator))
    _sync(device)
    return (time.perf_counter() - start) / steps


def process_pss(pid: int | str = "self") -> int:
    """Bytes: the proportional set size of one process (Linux)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree_pss(pid: int) -> int:
    """Bytes: the summed proportional set size of ``pid`` and its descendants (Linux)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += process_pss(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def peak_rss(pid: int | str = "self") -> int:
    """Bytes: the largest resident set ``pid`` has had (``VmHWM``; Linux): exact, where a sampled
    PSS is whatever moment the sampler happened to see."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def memory_report(trainer) -> dict:
    """MB, taken in a run at the end of its timed steps: ``tree_pss`` (main + loader workers, PSS
    now), ``main_peak`` (the main process's peak RSS), ``workers_pss`` (the workers' share of the
    tree) and ``optimizer_state`` (the tensors the optimizers keep between steps: SGD's or LARS's
    momentum)."""
    tree = process_tree_pss(os.getpid())
    state = sum(
        t.nbytes for o in trainer.optimizers for s in o.state.values() for t in s.values() if torch.is_tensor(t)
    )
    mb = 2**20
    return {
        "tree_pss": tree / mb,
        "main_peak": peak_rss() / mb,
        "workers_pss": (tree - process_pss()) / mb,
        "optimizer_state": state / mb,
    }


class StepTimer(L.Callback):
    """Seconds per training step after ``skip`` steps (warm-up, capture, compilation), and on
    CUDA the timed steps run under ``torch.cuda.set_sync_debug_mode("warn")`` to count waits.
    ``flag``: a file created when the timed steps start and removed when they end (the peers
    benchmark samples memory while it exists), and ``<flag>.json`` holding :func:`memory_report` at the end."""

    def __init__(self, skip: int, flag: str | None = None) -> None:
        self.skip, self.flag = skip, flag  # flag: a file that exists while the timed steps run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            _sync(pl_module.device)
            self.start = time.perf_counter()
            if self.flag:
                Path(self.flag).touch()
            if pl_module.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        _sync(pl_module.device)
        if self.flag:  # the run's memory at the end of the timed steps, however short they were
            Path(self.flag + ".json").write_text(json.dumps(memory_report(trainer)))
            Path(self.flag).unlink(missing_ok=True)
        self.steps = trainer.global_step - self.skip
        self.seconds = (time.perf_counter() - self.start) / self.steps


class DataOnly(L.LightningModule):
    """A model whose step only reads the views: ``Trainer.fit`` of it times the data path and the
    training loop without the network."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        views, _ = batch
        return self.weight * torch.stack([v.float().mean() for v in views]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def lightning_seconds_per_step(model, datamodule, device, steps: int, skip: int, speed=None) -> tuple[float, float]:
    """(seconds per step, device waits per step) of ``Trainer.fit`` as ``spectral-ssl pretrain`` runs it."""
    timer = StepTimer(skip)
    engine = {"devices": 1, **speed.trainer_arguments(accelerator=device.type)} if speed else {"devices": 1}
    trainer = L.Trainer(
        accelerator=device.type,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=skip + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *(speed.callbacks() if speed else [])],
        num_sanity_val_steps=0,
        **engine,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=datamodule)
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    for message in sorted({str(w.message) for w in caught} - {str(w.message) for w in waits}):
        print(f"warning during fit: {message}", file=sys.stderr)
    return timer.seconds, len(waits) / timer.steps


def _write_jpeg(args) -> None:
    import numpy as np
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    height, width = rng.integers(300, 501, 2)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((int(width), int(height)), Image.BICUBIC), dtype=np.int16)
    texture = rng.integers(-12, 13, smooth.shape, dtype=np.int16)  # photo-like detail, so file sizes are realistic
    Image.fromarray(np.clip(smooth + texture, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_jpeg_folder(root: Path, images: int, classes: int = 10) -> float:
    """An ImageFolder tree of ``images`` JPEGs of 300-500 px a side (ImageNet's typical sizes);
    returns the mean file size in kB."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = []
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{split}_{i:06d}.JPEG", i))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=64))
    sizes = [path.stat().st_size for path, _ in jobs]
    return sum(sizes) / len(sizes) / 1e3


def pil_loader(shape: str, root: Path, recipes, mean, std, batch: int, workers: int, gpu: bool):
    """The plain torchvision pipeline: PIL images through torchvision.transforms in DataLoader workers."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import datasets, transforms

    def view(r):
        steps = [
            transforms.RandomResizedCrop(r.size, scale=r.scale, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(r.flip_p),
            transforms.RandomApply([transforms.ColorJitter(*r.jitter)], p=r.jitter_p),
            transforms.RandomGrayscale(r.grayscale_p),
        ]
        if r.blur_p:
            steps.append(
                transforms.RandomApply(
                    [transforms.GaussianBlur(max(2 * (r.size // 20) + 1, 3), (0.1, 2.0))], p=r.blur_p
                )
            )
        if r.solarize_p:
            steps.append(transforms.RandomSolarize(128, p=r.solarize_p))
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])

    views = [view(r) for r in recipes]

    class Views(Dataset):
        def __init__(self):
            if shape == "cifar":
                from spectral_ssl.data import CIFARDataModule

                images, _ = CIFARDataModule(root=str(root)).load("train")
                self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
            else:
                self.images = datasets.ImageFolder(str(root / "train"))

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            image = self.images[i] if shape == "cifar" else self.images[i][0]
            return [v(image) for v in views]

    return DataLoader(
        Views(),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=gpu,
        persistent_workers=workers > 0,
    )


def run_pipeline(args) -> str:
    import itertools
    import tempfile

    from spectral_ssl.data import CIFARDataModule, ImageFolderDataModule
    from spectral_ssl.data.synthetic import write_cifar_folder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    compile = gpu if args.compile is None else args.compile
    graph = gpu  # on the CPU the graphed path is the eager one
    rows = [
        f"Pipelines side by side; {device_name(device)}, torch {torch.__version__}, {datetime.date.today()}. "
        f"Step: INTL (backbone, 3-layer projector, IterNorm + trace loss, SGD), two views, "
        f"{'bf16 + channels_last + ' + ('torch.compile + ' if compile else '') + 'CUDA graph' if gpu else 'fp32'}.",
        "",
        "| shape | pipeline | ms / step | images / s | s / epoch | (2)/(1), (3)/(2) | data path alone, ms / step "
        "| device waits / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in args.shapes:
        arch, image, dims, epoch_images = SHAPES[shape]
        dim = args.dim or dims[0 if gpu else 1]
        batch = args.batch or {"cifar": (512, 64), "imagenet": (256, 16)}[shape][0 if gpu else 1]
        steps = args.steps or (20 if gpu else 3)
        # ImageNet: enough JPEG files that the longest timed run (data path alone) stays in one epoch
        images = args.images or {"cifar": (50_000, 5_000), "imagenet": (batch * (2 * steps + 10), 128)}[shape][not gpu]
        L.seed_everything(0, verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            if shape == "cifar":
                write_cifar_folder(root, train_images=images, test_images=100)
                data = CIFARDataModule(root=tmp, batch_size=batch, num_workers=args.workers, augment_on_device=True)
                note = f"{images:,} generated 32x32 images"
            else:
                kb = write_jpeg_folder(root, images)
                data = ImageFolderDataModule(
                    root=tmp, batch_size=batch, num_workers=args.workers, augment_on_device=True
                )
                note = f"{images:,} generated JPEG files, 300-500 px, {kb:.0f} kB on average"
            speed = speed_options(device, compile, graph)
            step = training_step(intl_model(shape, dim), speed, device, bf16=gpu)
            random_views = [torch.randn(batch, 3, image, image, device=device) for _ in range(2)]
            model_only = seconds_per_step(itertools.repeat(random_views), step, device, steps)
            skip = 8 if gpu else 2
            ours, waits = lightning_seconds_per_step(intl_model(shape, dim), data, device, steps, skip, speed)
            ours_data, _ = lightning_seconds_per_step(DataOnly(), data, device, 2 * steps, skip)
            recipes = data.view_recipes()
            loader = pil_loader(shape, root, recipes, data.mean, data.std, batch, args.workers, gpu)

            def pil_batches(loader=loader):
                while True:
                    for views in loader:
                        yield [v.to(device, non_blocking=True) for v in views]

            pil = seconds_per_step(pil_batches(), step, device, steps)
            pil_data = seconds_per_step(pil_batches(), lambda views: views[0].float().mean(), device, 2 * steps)
        label = f"{shape}: {arch} {image}px, 2 x {batch}, {dim}-d head ({note})"
        for name, seconds, ratio, data_only, wait in (
            ("(1) model only: random tensors on the device", model_only, "", "", ""),
            (
                "(2) ours: `Trainer.fit`, views made on the device",
                ours,
                f"{ours / model_only:.2f}",
                f"{1e3 * ours_data:.1f}",
                f"{waits:.1f}" if gpu else "",
            ),
            (
                f"(3) torchvision PIL + DataLoader, {args.workers} workers",
                pil,
                f"{pil / ours:.2f}",
                f"{1e3 * pil_data:.1f}",
                "",
            ),
        ):
            rate = batch / seconds
            rows.append(
                f"| {label} | {name} | {1e3 * seconds:.1f} | {rate:,.{0 if rate >= 100 else 1}f} "
                f"| {epoch_images / batch * seconds:,.1f} | {ratio} | {data_only} | {wait} |"
            )
            print(rows[-1], flush=True)
    rows += [
        "",
        "images / s counts images (each seen as two views). (2) runs the whole `spectral-ssl pretrain` "
        "training loop (Lightning, logging hooks, the datamodule's device augmentation); (1) and (3) the "
        "same model's step alone. Data path alone: (2) `Trainer.fit` of a model that only reads the views, "
        "(3) the DataLoader and the copy to the device. "
        f"Command: `python tools/benchmark.py {' '.join(sys.argv[1:])}`",
    ]
    return "\n".join(rows)


BACKBONE_ROWS = [  # (label, create_backbone options, image size)
    ("ResNet-18, CIFAR stem", dict(name="resnet18", cifar_stem=True), 32),
    ("ViT-Tiny/4", dict(name="vit_tiny", patch_size=4), 32),
    ("ViT-Small/4", dict(name="vit_small", patch_size=4), 32),
    ("ResNet-18", dict(name="resnet18"), 224),
    ("ResNet-50", dict(name="resnet50"), 224),
    ("ViT-Tiny/16", dict(name="vit_tiny", patch_size=16), 224),
    ("ViT-Small/16", dict(name="vit_small", patch_size=16), 224),
]
VIT_NORMS = ["ln", "rms", "pln", "pls", "lng", "pln+pln"]  # pln+pln: PLN as the norm and as the MLPs' activation


def backbone_step(options: dict, image: int, batch: int, device: torch.device, bf16: bool):
    """Forward + backward of the backbone alone on ``batch`` images (the loss: the features' mean square)."""
    model = create_backbone(**options, image_size=image).to(device)
    images = torch.randn(batch, 3, image, image, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(images).float().square().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def flops_per_image(model, image: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, image, image, device=device))
    model.train()
    return counter.get_total_flops()


def run_backbones(args) -> str:
    """Parameters, forward FLOPs per image and the training step (forward + backward) of ResNets and
    ViTs side by side, then a ViT's norm choices against LayerNorm in the same run (ratios)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    min_time = 1.0 if gpu else 0.5
    rows = [
        f"Backbones side by side; {device_name(device)}, torch {torch.__version__}, {datetime.date.today()}. "
        f"Step: forward + backward of the backbone alone, {'bf16 autocast' if gpu else 'fp32'}.",
        "",
        "| backbone | image | parameters | GFLOPs / image (forward) | batch | ms / step | images / s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, options, image in BACKBONE_ROWS:
        batch = args.batch or (256 if gpu else 32 if image <= 64 else 8)
        model, step = backbone_step(options, image, batch, device, gpu)
        ms = time_ms(step, min_time)
        params = sum(p.numel() for p in model.parameters())
        gflops = flops_per_image(model, image, device) / 1e9
        rows.append(
            f"| {label} | {image} | {params / 1e6:.1f} M | {gflops:.2f} | {batch} | {ms:.1f} "
            f"| {batch / ms * 1e3:,.0f} |"
        )
        print(rows[-1], flush=True)
    image, patch = 32, 4
    batch = args.batch or (256 if gpu else 32)
    rows += [
        "",
        f"ViT-Small/{patch} at {image} px, the norm (and activation) against LayerNorm, measured in the same run:",
        "",
        "| norm | ms / step | ratio to ln |",
        "|---|---|---|",
    ]
    reference = None
    for choice in VIT_NORMS:
        norm, _, act = choice.partition("+")
        _, step = backbone_step(
            dict(name="vit_small", patch_size=patch, norm=norm, act=act or None), image, batch, device, gpu
        )
        ms = time_ms(step, min_time)
        reference = reference or ms
        rows.append(f"| {choice} | {ms:.1f} | {ms / reference:.2f} |")
        print(rows[-1], flush=True)
    rows += ["", f"Command: `python tools/benchmark.py {' '.join(sys.argv[1:])}`"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    iternorm = sub.add_parser("iternorm", help="IterNorm in its D x D and N x N forms")
    iternorm.add_argument("--sizes", nargs="+", help="batch x dim pairs such as 256x8192")
    iternorm.add_argument("--out", type=Path, help="also write the markdown table here")
    pipeline = sub.add_parser("pipeline", help="model-only vs our data path vs a torchvision PIL pipeline")
    pipeline.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["cifar", "imagenet"])
    pipeline.add_argument("--batch", type=int, help="images per view (CUDA: 512 CIFAR, 256 ImageNet; CPU: 64, 16)")
    pipeline.add_argument("--steps", type=int, help="timed steps (20 on CUDA, 3 on the CPU)")
    pipeline.add_argument("--dim", type=int, help="projector width (CUDA: 2048 CIFAR, 8192 ImageNet; CPU: 2048)")
    pipeline.add_argument("--workers", type=int, default=2, help="DataLoader workers of both data paths")
    pipeline.add_argument("--images", type=int, help="size of the generated training set")
    pipeline.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA)")
    pipeline.add_argument("--out", type=Path, help="also write the markdown table here")
    backbones = sub.add_parser("backbones", help="ResNets and ViTs: parameters, FLOPs, step time; ViT norms")
    backbones.add_argument("--batch", type=int, help="images per step (CUDA 256; CPU 32 at 32 px, 8 at 224 px)")
    backbones.add_argument("--out", type=Path, help="also write the markdown table here")
    scale = sub.add_parser("scale", help="cost of each component at growing dataset sizes, extrapolated")
    scale.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    scale.add_argument(
        "--components",
        nargs="+",
        default=["index", "data", "monitors", "knn", "linear"],
        choices=["index", "data", "monitors", "knn", "linear"],
        help="what to measure (default: all)",
    )
    scale.add_argument("--out", type=Path, help="also write the markdown table here")
    peers = sub.add_parser("peers", help="lightly's Barlow Twins pipeline and ours, side by side")
    peers.add_argument("--quick", action="store_true", help="a tiny run (the test suite's)")
    peers.add_argument("--no-peer", action="store_true", help="ours alone, even with lightly installed")
    peers.add_argument("--images", type=int, default=10_000, help="generated 32 px training images")
    peers.add_argument("--batch", type=int, default=128)
    peers.add_argument("--skip", type=int, default=4, help="training steps before the timed ones")
    peers.add_argument("--steps", type=int, default=6, help="timed training steps")
    peers.add_argument("--rounds", type=int, default=2, help="alternations of lightly and ours")
    peers.add_argument("--out", type=Path, help="also write the markdown table here")
    quality = sub.add_parser("quality", help="every method's accuracy on Fashion-MNIST at one CPU budget, seeds")
    quality.add_argument("--methods", nargs="+", default=None, help="default: all seven")
    quality.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    quality.add_argument("--epochs", type=int, default=4)
    quality.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    quality.add_argument("--quick", action="store_true", help="a tiny run on generated IDX files (the test suite's)")
    quality.add_argument("--extra", nargs="*", default=[], help="more pretrain flags for every run")
    quality.add_argument("--peer", action="store_true", help="also lightly's implementation (the [bench] extra)")
    quality.add_argument(
        "--out", type=Path, default=Path("checkpoints/quality"), help="folder: quality.md, .csv, runs/"
    )
    args = parser.parse_args()
    if args.benchmark == "quality":
        from quality_benchmark import METHODS, run_quality

        args.methods = args.methods or METHODS
        print(run_quality(args))
        return
    if args.benchmark == "peers":
        from peers_benchmark import run_peers

        table = run_peers(args)
    elif args.benchmark == "scale":
        from scale_benchmark import run_scale

        table = run_scale(args)
    else:
        run = {"iternorm": run_iternorm, "pipeline": run_pipeline, "backbones": run_backbones}[args.benchmark]
        table = run(args)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()

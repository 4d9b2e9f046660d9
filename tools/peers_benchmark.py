"""Side by side with a peer library: lightly's documented Barlow Twins pipeline against ours, one
process tree, runs alternated (``python tools/benchmark.py peers``; lightly from the ``[bench]``
extra, never a dependency of the package: without it, the peer's columns are skipped and said so).

The job: Barlow Twins, torchvision's ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) and a
2048-2048-2048 projector, batch 128 of 32 px CIFAR-format images (generated), fp32, monitors off.

- lightly: its Barlow Twins example (``BarlowTwinsProjectionHead(512, 2048, 2048)``,
  ``BarlowTwinsLoss``, SGD lr 0.06) and its ``BYOLTransform`` views (``input_size=32,
  gaussian_blur=0``) on PIL images in a plain ``Dataset``, trained by ``pytorch_lightning``;
- ours: ``spectral-ssl pretrain --config cifar10/barlow_twins`` (LARS), as users run it.

Measured: (1) per image, one thread, two views, at 32 px from memory and at 224 px from JPEG files
(300-500 px, ImageNet's typical sizes; lightly's 224 px ``BYOLTransform`` defaults: blur on view 1,
blur 0.1 + solarize 0.2 on view 2, as our ImageNet recipe); (2) the data path alone, ms per batch
of 128 at 0 and 2 loader workers; (3) the model step alone on synthetic input; (4) training
images/s at 0 and 2 workers, steady state after the warm-up steps, each run a subprocess, peak
memory the largest sum of the PSS of the run's processes (main + workers) sampled every 0.1 s
during the timed steps (steady-state training; not the start-up nor a checkpoint's write).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))


def lightly_available() -> bool:
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


def cifar_resnet18() -> torch.nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem, as a feature extractor (512-d)."""
    import torchvision

    resnet = torchvision.models.resnet18()
    resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    resnet.maxpool, resnet.fc = torch.nn.Identity(), torch.nn.Identity()
    return resnet


def lightly_views(size: int):
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    if size == 32:
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
            view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0),
        )
    return BYOLTransform(view_1_transform=BYOLView1Transform(), view_2_transform=BYOLView2Transform())


class PILImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 gives a transform: ``Image.fromarray`` of each HWC array."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images.permute(0, 2, 3, 1).numpy(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), 0


def our_data(root: str, batch: int, workers: int):
    from spectral_ssl.data import CIFARDataModule

    data = CIFARDataModule(root=root, batch_size=batch, num_workers=workers)
    data.setup()
    return data


# --- (1) and (2): the data path -----------------------------------------------------------------
def per_image_ms(make, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        make(i)
    return 1e3 * (time.perf_counter() - start) / count


def data_path(root: str, jpeg_root: str, batch: int, images: int, jpegs: int, rounds: int, peer: bool) -> dict:
    """(1) per image (one thread) and (2) per batch (0 and 2 workers), alternated over ``rounds``."""
    from PIL import Image
    from torchvision.datasets.folder import default_loader

    from spectral_ssl.data import ImageFolderDataModule
    from spectral_ssl.data.views import MultiView

    torch.set_num_threads(1)
    ours = our_data(root, batch, 0)
    ours_set = ours.dataset("pretrain", MultiView(ours.view_transforms()))
    folder = ImageFolderDataModule(root=jpeg_root, batch_size=batch, num_workers=0)
    folder.setup()
    folder_set = folder.dataset("pretrain", MultiView(folder.view_transforms()))
    paths = [folder.samples["train"][i][0] for i in range(jpegs)]
    pixels = ours.pretrain_tensors()[0].permute(0, 2, 3, 1).numpy()
    count, seed = min(images, 2000), random.Random(0).randrange(2**62)
    makers = {  # one image's two views, from what each library's dataset holds
        "ours 32": (lambda i: ours_set[(i % len(ours_set), seed + i)], count),
        "ours 224": (lambda i: folder_set[(i % len(folder_set), seed + i)], len(paths)),
    }
    if peer:
        small, large = lightly_views(32), lightly_views(224)
        makers["lightly 32"] = (lambda i: small(Image.fromarray(pixels[i % len(pixels)])), count)
        makers["lightly 224"] = (lambda i: large(default_loader(paths[i % len(paths)])), len(paths))
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name in sorted(makers):  # lightly first, then ours, in every round
            results.setdefault(name, []).append(per_image_ms(*makers[name]))
    torch.set_num_threads(os.cpu_count() or 1)
    for workers in (0, 2):
        for _ in range(rounds):
            if peer:
                loader = torch.utils.data.DataLoader(
                    PILImages(torch.from_numpy(pixels).permute(0, 3, 1, 2), lightly_views(32)),
                    batch_size=batch,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                )
                results.setdefault(f"lightly loader {workers}", []).append(batch_ms(loader))
            results.setdefault(f"ours loader {workers}", []).append(
                batch_ms(our_data(root, batch, workers).train_dataloader())
            )
    return {k: statistics.mean(v) for k, v in results.items()}


def batch_ms(loader, skip: int = 2, batches: int = 8) -> float:
    """ms per batch drawn from ``loader`` after ``skip`` batches (workers started, caches warm)."""
    iterator = iter(loader)
    batches = min(batches, len(loader) - skip)
    for _ in range(skip):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 1e3 * (time.perf_counter() - start) / batches


# --- (3) the model step alone -----------------------------------------------------------------------
def model_step_ms(batch: int, rounds: int, peer: bool, steps: int) -> dict:
    from spectral_ssl.methods import BarlowTwins

    views = [torch.randn(batch, 3, 32, 32) for _ in range(2)]
    ours = BarlowTwins(backbone={"name": "resnet18", "cifar_stem": True}, projector_dims=[2048, 2048, 2048])
    ours_optimizer = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)

    def ours_step():
        loss = ours.compute_loss(views)["loss"]
        ours_optimizer.zero_grad()
        loss.backward()
        ours_optimizer.step()

    steps_fn = {"ours": ours_step}
    if peer:
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules import BarlowTwinsProjectionHead

        backbone, head, criterion = cifar_resnet18(), BarlowTwinsProjectionHead(512, 2048, 2048), BarlowTwinsLoss()
        peer_optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.06)

        def lightly_step():
            loss = criterion(head(backbone(views[0])), head(backbone(views[1])))
            peer_optimizer.zero_grad()
            loss.backward()
            peer_optimizer.step()

        steps_fn = {"lightly": lightly_step, **steps_fn}
    results: dict[str, list[float]] = {}
    for step in steps_fn.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, step in steps_fn.items():
            results.setdefault(name, []).append(per_image_ms(lambda _, step=step: step(), steps))
    return {f"{k} step": statistics.mean(v) for k, v in results.items()}


# --- (4) training, one subprocess per run ---------------------------------------------------------
PINNED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc's malloc with a fixed mmap threshold: every block over 64 KiB is its own mapping, returned
when freed. By default the threshold moves up to the largest block freed so far (up to 32 MiB),
and freed activations stay in the heap in a layout that differs from run to run: the peak of the
same run then varies by 100-200 MB, more than the difference measured (``--memory`` runs)."""


def train_run(framework: str, root: str, batch: int, workers: int, skip: int, steps: int, pinned: bool = False) -> dict:
    """Runs ``_train`` in a subprocess (``pinned``: under :data:`PINNED_ALLOCATOR`), sampling its
    process tree's memory; returns its report with ``peak_mb`` (the largest summed PSS seen) and
    the run's own :func:`benchmark.memory_report`."""
    from benchmark import process_tree_pss

    flag = Path(root) / f"timing-{framework}"
    command = [sys.executable, __file__, "_train", framework, root, str(batch), str(workers), str(skip), str(steps)]
    env = {**os.environ, **(PINNED_ALLOCATOR if pinned else {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    peak, done = [0], threading.Event()

    def sample():  # while the timed steps run (the flag file exists): steady-state training
        while not done.wait(0.1):
            if flag.exists():
                peak[0] = max(peak[0], process_tree_pss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{framework} training run failed:\n{err[-3000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    memory = json.loads(Path(f"{flag}.json").read_text())  # the run's own, at the end of its timed steps
    return {**report, **memory, "peak_mb": max(peak[0] / 2**20, memory["tree_pss"])}


def _train(framework: str, root: str, batch: int, workers: int, skip: int, steps: int) -> None:
    """In the subprocess: ``skip + steps`` steps; prints {"images_per_s": ...} as its last line.
    The file ``<root>/timing-<framework>`` exists while the timed steps run."""
    flag = Path(root) / f"timing-{framework}"
    if framework == "ours":
        from benchmark import StepTimer
        from spectral_ssl.commands import pretrain

        cli = pretrain(
            [
                *("--config", "cifar10/barlow_twins", "--output_dir", root, "--run_name", "ours"),
                *(f"--data.init_args.root={root}", f"--data.init_args.batch_size={batch}"),
                *(f"--data.init_args.num_workers={workers}", f"--trainer.max_steps={skip + steps}"),
                *("--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--online_probe.every_n_epochs=0"),
                *("--trainer.enable_progress_bar=false", "--trainer.logger=false", "--resume=false"),
                "--overwrite=true",
                "--trainer.callbacks="
                + json.dumps([{"class_path": "benchmark.StepTimer", "init_args": {"skip": skip, "flag": str(flag)}}]),
            ]
        )
        seconds = cli.callback(StepTimer).seconds
    else:
        seconds = _train_lightly(root, batch, workers, skip, steps, flag)
    print(json.dumps({"images_per_s": batch / seconds}))


def _train_lightly(root: str, batch: int, workers: int, skip: int, steps: int, flag: Path) -> float:
    import pytorch_lightning as pl
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    from benchmark import memory_report
    from spectral_ssl.data import CIFARDataModule

    class BarlowTwinsModel(pl.LightningModule):  # lightly's examples/pytorch_lightning/barlowtwins.py
        def __init__(self):
            super().__init__()
            self.backbone, self.head = cifar_resnet18(), BarlowTwinsProjectionHead(512, 2048, 2048)
            self.criterion = BarlowTwinsLoss()

        def training_step(self, batch, batch_index):
            (x0, x1), _ = batch
            return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.06)

    class Timer(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == skip:
                self.start = time.perf_counter()
                flag.touch()

        def on_train_end(self, trainer, *_):
            Path(f"{flag}.json").write_text(json.dumps(memory_report(trainer)))
            flag.unlink(missing_ok=True)
            self.seconds = (time.perf_counter() - self.start) / (trainer.global_step - skip)

    images, _ = CIFARDataModule(root=root).load("train")
    loader = torch.utils.data.DataLoader(
        PILImages(images, lightly_views(32)),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    timer = Timer()
    trainer = pl.Trainer(
        max_steps=skip + steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(BarlowTwinsModel(), loader)
    return timer.seconds


# --- the table --------------------------------------------------------------------------------------
def run_peers(args) -> str:
    from benchmark import write_jpeg_folder
    from spectral_ssl.data.synthetic import write_cifar_folder

    peer = lightly_available() and not args.no_peer
    quick = args.quick
    images, jpegs = (256, 16) if quick else (args.images, 200)
    batch, skip, steps, rounds = (16, 1, 2, 1) if quick else (args.batch, args.skip, args.steps, args.rounds)
    lines = []
    if not peer:
        install = "pip install -c requirements-lock.txt -e '.[bench]'"
        why = "--no-peer" if args.no_peer else f"lightly is not installed ({install})"
        lines.append(f"{why}: the peer's columns are skipped; ours alone follow.")
    with tempfile.TemporaryDirectory() as tmp:
        root, jpeg_root = Path(tmp) / "cifar", Path(tmp) / "jpeg"
        write_cifar_folder(root, train_images=images, test_images=batch)
        write_jpeg_folder(jpeg_root, jpegs)
        data = data_path(str(root), str(jpeg_root), batch, images, jpegs, rounds, peer)
        model = model_step_ms(batch, rounds, peer, steps=1 if quick else 3)
        training: dict[str, list[dict]] = {}
        for workers in (0, 2):
            for _ in range(rounds):
                for framework in ("lightly", "ours") if peer else ("ours",):
                    report = train_run(framework, str(root), batch, workers, skip, steps)
                    training.setdefault(f"{framework} {workers}", []).append(report)
            for framework in ("lightly", "ours") if peer else ("ours",):  # deterministic: one run each
                pinned = train_run(framework, str(root), batch, workers, 1 if quick else 2, 1, pinned=True)
                training[f"{framework} {workers} pinned"] = [pinned]
    timed = [  # (row, key, source, format): times, the ratio lightly / ours (> 1: ours faster)
        ("per image, one thread, two views, 32 px (ms)", "32", data, "{:.3f}"),
        ("per image, one thread, two views, 224 px from JPEG (ms)", "224", data, "{:.3f}"),
        (f"data path alone, 0 workers (ms per batch of {batch})", "loader 0", data, "{:.0f}"),
        (f"data path alone, 2 workers (ms per batch of {batch})", "loader 2", data, "{:.0f}"),
        ("model step alone, synthetic input (ms)", "step", model, "{:.0f}"),
    ]
    table = ["| | lightly | spectral-ssl | ratio | goal |", "|---|---|---|---|---|"]
    for label, key, source, fmt in timed:
        theirs, ours = source.get(f"lightly {key}"), source[f"ours {key}"]
        ratio = f"{theirs / ours:.2f}" if theirs else "-"
        table.append(f"| {label} | {fmt.format(theirs) if theirs else '-'} | {fmt.format(ours)} | {ratio} | >= 1 |")
    state = {}
    for workers in (0, 2):
        theirs, ours = training.get(f"lightly {workers}"), training[f"ours {workers}"]
        rate = {
            name: statistics.mean(r["images_per_s"] for r in runs)
            for name, runs in (("l", theirs or []), ("o", ours))
            if runs
        }
        memory = {name: max(r["peak_mb"] for r in runs) for name, runs in (("l", theirs or []), ("o", ours)) if runs}
        table.append(
            f"| training, {workers} loader workers (images/s; ratio ours / lightly) | "
            f"{rate['l']:.1f} | {rate['o']:.1f} | {rate['o'] / rate['l']:.2f} | >= 1 |"
            if theirs
            else f"| training, {workers} loader workers (images/s) | - | {rate['o']:.1f} | - | |"
        )
        table.append(
            f"| peak memory, {workers} workers, default allocator: main + workers (MB PSS, sampled; ratio ours / "
            f"lightly) | {memory['l']:,.0f} | {memory['o']:,.0f} | {memory['o'] / memory['l']:.2f} | |"
            if theirs
            else f"| peak memory, {workers} workers, default allocator: main + workers (MB PSS, sampled) | - | "
            f"{memory['o']:,.0f} | - | |"
        )
        net = {  # exact peak (VmHWM) of the main process + the workers' PSS, less the optimizer's state
            name: runs[0]["main_peak"] + runs[0]["workers_pss"] - runs[0]["optimizer_state"]
            for name, runs in (
                ("l", training.get(f"lightly {workers} pinned")),
                ("o", training[f"ours {workers} pinned"]),
            )
            if runs
        }
        state[workers] = training[f"ours {workers} pinned"][0]["optimizer_state"]
        table.append(
            f"| peak memory, {workers} workers, allocator pinned: main peak RSS + workers' PSS - optimizer state "
            f"(MB; ratio ours / lightly) | {net['l']:,.0f} | {net['o']:,.0f} | {net['o'] / net['l']:.3f} | <= 1 |"
            if "l" in net
            else f"| peak memory, {workers} workers, allocator pinned: main peak RSS + workers' PSS - optimizer state "
            f"(MB) | - | {net['o']:,.0f} | - | |"
        )
    lines += [
        f"Barlow Twins, ResNet-18 (CIFAR stem), 2048-2048-2048 projector, batch {batch}, fp32; {images:,} "
        f"generated 32 px images, {jpegs} JPEGs of 300-500 px; {rounds} round(s) alternated, training timed "
        f"after {skip} steps for {steps}; torch {torch.__version__}, {os.cpu_count()} CPU cores.",
        "",
        *table,
        "",
        f"Optimizer state: ours {state[0]:.1f} MB (LARS momentum), lightly's 0 (SGD without momentum). Allocator "
        f"pinned: {' '.join(f'{k}={v}' for k, v in PINNED_ALLOCATOR.items())} for both, one run each after "
        f"{1 if quick else 2} steps (the default allocator's peak varies by 100-200 MB between identical runs).",
        "",
        f"Command: `python tools/benchmark.py {' '.join(sys.argv[1:])}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_train":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    framework, root, batch, workers, skip, steps = sys.argv[2:8]
    _train(framework, root, int(batch), int(workers), int(skip), int(steps))

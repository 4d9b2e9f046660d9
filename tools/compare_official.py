"""Trains a shipped INTL recipe step by step beside the official INTL code itself, from the same
weights on the same views, and prints the largest differences after every step.

    git clone https://github.com/winci-ai/INTL /tmp/INTL      # the official code (never shipped here)
    python tools/compare_official.py --official /tmp/INTL                       # cifar10/intl
    python tools/compare_official.py --official /tmp/INTL --recipe imagenet/intl_multicrop

Our side is the recipe's own command (``spectral-ssl pretrain --config <recipe>``) on a few
generated images in the recipe's format, float64, monitors off, a schedule shortened to 10 steps
(2 an epoch: 4 of warm-up, then the cosine) and the backbone at the official width (64) (ImageNet's views at 64 px); the
official side is its code, imported from ``--official``: its network (``methods/``, ``src/``), its
whitening and loss, and its ``adjust_learning_rate`` / ``adjust_momentum`` (read out of its
``main.py``, whose imports need wandb and a GPU). What its ``main_worker`` does inline is restated
here: SGD with momentum 0.9 over every parameter (CIFAR) or with the 1-D ones spared (ImageNet),
``base_lr = lr x batch / 256``, warm-up and total steps in steps of the loader. The official code
needs a process group and calls ``.cuda()`` on its inputs: a one-process gloo group is started and
``Tensor.cuda`` is the identity while it runs; SyncBatchNorm is left out (in one process it is
BatchNorm). A second official run with the inputs moved by one ulp gives the round-off to read
the differences against. On 2 CPU cores: about a minute (CIFAR) to a few (ImageNet's ResNet-50).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trajectory import compare, record_recipe, table  # noqa: E402

STEPS, PER_EPOCH = 10, 2
RECIPES = {
    # recipe: (official main: "cifar" or "imagenet", official cfg values, our overrides besides the data)
    "cifar10/intl": ("cifar", dict(arch="resnet18", dataset="cifar10", lr=0.3, weight_decay=1e-4, m=0.0), 32),
    "cifar100/intl": ("cifar", dict(arch="resnet18", dataset="cifar100", lr=0.3, weight_decay=1e-4, m=0.0), 32),
    "imagenet100/intl": (
        "imagenet",
        dict(arch="resnet18", dataset="in100", lr=0.5, weight_decay=2.5e-5, m=0.0),
        16,
    ),
    "imagenet/intl": ("imagenet", dict(arch="resnet50", dataset="imagenet", lr=0.3, weight_decay=1e-5, m=0.0), 16),
    "imagenet/intl_multicrop": (
        "imagenet",
        dict(arch="resnet50", dataset="imagenet", lr=0.3, weight_decay=1e-5, m=0.996, method="intl_m"),
        16,
    ),
}
PROJECTOR = 256  # the projector's hidden and output width on both sides (the recipes' 2048-8192, shrunk)


def official_functions(main_py: Path, names: tuple[str, ...]) -> dict:
    """The named functions of the official ``main.py``, compiled from its source alone (the module's
    own imports need wandb and a GPU)."""
    tree = ast.parse(main_py.read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    namespace = {"math": math}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(main_py), "exec"), namespace)
    return {name: namespace[name] for name in names}


@contextlib.contextmanager
def one_process_group():
    """A gloo process group of one (the official whitening all-gathers), and ``Tensor.cuda`` as the
    identity (its forward calls it on the inputs)."""
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        dist.destroy_process_group()


class Official:
    """The official code as a :class:`trajectory.Reference`; keys mapped to ours
    (``projection.`` -> ``projector.``, ``momentum_backbone.`` / ``momentum_projection.`` ->
    ``target.network.0.`` / ``.1.``)."""

    RENAMES = {
        "projection.": "projector.",
        "momentum_backbone.": "target.network.0.",
        "momentum_projection.": "target.network.1.",
    }

    def __init__(self, root: Path, kind: str, cfg: dict, batch: int, nudge: bool = False) -> None:
        folder = root / "cifar" if kind == "cifar" else root
        sys.path[:0] = [str(root), str(folder)]
        from methods import get_method

        official = dict(method="intl", axis=0, iters=4, projection_layers=3, projection_size=PROJECTOR, emb=PROJECTOR)
        self.cfg = SimpleNamespace(**{**official, **cfg, "bs": batch})
        self.model = get_method(self.cfg.method)(self.cfg).double()
        self.schedule = official_functions(folder / "main.py", ("adjust_learning_rate", "adjust_momentum"))
        self.cfg.base_lr = self.cfg.lr * batch / 256
        self.cfg.warmup_steps, self.cfg.total_steps = 2 * PER_EPOCH, STEPS
        params = [p for p in self.model.parameters() if p.requires_grad]
        if kind == "cifar":  # cifar/main.py: SGD(model.parameters(), 0, momentum=0.9, weight_decay=wd)
            groups = [{"params": params, "weight_decay": self.cfg.weight_decay}]
        else:  # main.py: 1-D parameters without weight decay
            groups = [
                {"params": [p for p in params if p.ndim == 1], "weight_decay": 0},
                {"params": [p for p in params if p.ndim != 1], "weight_decay": self.cfg.weight_decay},
            ]
        self.optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9)
        self.nudge, self.done = nudge, 0

    def _ours(self, key: str) -> str:
        for theirs, ours in self.RENAMES.items():
            if key.startswith(theirs):
                return ours + key[len(theirs) :]
        return key

    def load(self, state: dict) -> None:
        theirs = {key: self._ours(key) for key in self.model.state_dict()}
        self.model.load_state_dict({key: state[ours].clone() for key, ours in theirs.items()})
        self.model.train()

    def step(self, views: list, step: int) -> float:
        if self.nudge:
            views = [torch.nextafter(v, torch.full_like(v, math.inf)) for v in views]
        self.schedule["adjust_learning_rate"](self.optimizer, self.cfg, step)
        self.schedule["adjust_momentum"](SimpleNamespace(module=self.model), self.cfg, step)
        self.optimizer.zero_grad()
        loss = self.model(views)
        loss.backward()
        self.optimizer.step()
        self.done = step + 1
        return loss.item()

    def state(self) -> dict:
        """Its weights under our keys. Its momentum encoder moves first thing in the next forward
        (with that step's m, from the weights after this one); ours right after this step, with the
        same m: the pending update is applied here, on a copy, so both are read at the same point."""
        state = {self._ours(key): value.clone() for key, value in self.model.state_dict().items()}
        if self.cfg.method == "intl_m":
            pending = SimpleNamespace(module=SimpleNamespace(m=None))
            self.schedule["adjust_momentum"](pending, self.cfg, self.done)
            m = pending.module.m
            for prefix, online in (
                ("target.network.0.", self.model.backbone),
                ("target.network.1.", self.model.projection),
            ):
                for name, param in online.named_parameters():
                    state[prefix + name] = state[prefix + name] * m + param.detach() * (1.0 - m)
        return state


SMALL_CROPS = {  # ImageNet's views shrunk by 224 -> 64 (their scales kept), so that ResNet-50 runs on a CPU
    "imagenet/intl_multicrop": [(64, 0.2, 1.0), (64, 0.2, 1.0), (56, 0.171, 0.857), (48, 0.143, 0.714),
                                (40, 0.114, 0.571), (32, 0.086, 0.429)],
}  # fmt: skip


def write_data(kind: str, folder: Path, recipe: str, batch: int) -> list[str]:
    """A few generated images in the recipe's format, the batch, one device; ImageNet's views at 64 px."""
    from spectral_ssl.data.synthetic import write_cifar_folder, write_image_folder

    if kind == "cifar":
        # CIFAR-10's five files hold a fifth each: 10 images more than the epoch needs keep it whole
        classes = 100 if "100" in recipe else 10
        write_cifar_folder(folder, train_images=PER_EPOCH * batch + 10, test_images=10, num_classes=classes)
        return [f"--data.root={folder}", f"--data.batch_size={batch}"]
    write_image_folder(folder, per_class=PER_EPOCH * batch // 2, size=(72, 80), corrupt=False)
    crops = SMALL_CROPS.get(recipe, [(64, 0.08, 1.0)] * 2)
    augment = ", ".join(f"{{size: {size}, scale: [{low}, {high}]}}" for size, low, high in crops)
    return [f"--data.root={folder}", f"--data.batch_size={batch}", "--trainer.devices=1", "--trainer.strategy=auto",
            "--trainer.sync_batchnorm=false", "--data.image_size=64", f"--data.augment=[{augment}]"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="a checkout of github.com/winci-ai/INTL")
    parser.add_argument("--recipe", choices=RECIPES, default="cifar10/intl")
    args = parser.parse_args(argv)
    if not (args.official / "methods" / "intl.py").is_file():
        parser.error(f"{args.official} is not a checkout of winci-ai/INTL (no methods/intl.py); git clone it first")
    kind, cfg, batch = RECIPES[args.recipe]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(kind, Path(tmp) / "data", args.recipe, batch)
        overrides = [*data, f"--model.projector_dims=[{PROJECTOR},{PROJECTOR},{PROJECTOR}]",
                     f"--trainer.max_epochs={STEPS // PER_EPOCH}"]  # fmt: skip
        record = record_recipe(args.recipe, overrides, Path(tmp) / "runs", steps=STEPS)
    parameters = {k for k in record.initial if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    with one_process_group():
        rows = compare(record, Official(args.official, kind, cfg, batch), parameters)
        noise = compare(record, Official(args.official, kind, cfg, batch, nudge=True), parameters)
    print(f"{args.recipe} against the official code at {args.official} (float64, {STEPS} steps):\n")
    print(table(rows, [SimpleNamespace(parameters=theirs.parameters) for theirs in noise]))


if __name__ == "__main__":
    main()

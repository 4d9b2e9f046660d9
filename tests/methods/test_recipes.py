"""Every shipped INTL recipe trains as the official code does, step by step: the recipe's own
command (``spectral-ssl pretrain --config <dataset>/intl``, shrunk: narrow backbone and heads, a
few images, a schedule of 10 steps that crosses from warm-up into the cosine, float64) against a
reference written here in plain torch from the official code's behaviour (winci-ai/INTL at 0aa69af:
its network, optimizer groups, schedules and loss as facts, not its code), from the same weights on
the same views. Parameters, BatchNorm buffers and losses agree to round-off after every step
(tools/trajectory.py runs both sides; tools/compare_official.py runs the official code itself).
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from trajectory import compare, record_recipe, table  # noqa: E402

pytestmark = pytest.mark.slow  # each records a real run of the command

STEPS, PER_EPOCH = 10, 2  # 2 steps an epoch, 5 epochs: warm-up (2 epochs) for 4 steps, then 6 of the cosine
ROUND_OFF = 1e-9  # float64; the official code moves by 3.6e-10 when its inputs move by one ulp (10 steps)


# --- the official network, as facts ------------------------------------------------------------
def conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


class Block(nn.Module):
    """torchvision's BasicBlock / Bottleneck (v1.5: stride in the 3x3), ReLU after the addition."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride, 1), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = conv(planes, out, 1), nn.BatchNorm2d(out)
        else:
            self.conv1, self.bn1 = conv(cin, planes, 3, stride, 1), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, 1, 1), nn.BatchNorm2d(planes)
        self.bottleneck = bottleneck
        self.downsample = (
            nn.Sequential(conv(cin, out, 1, stride), nn.BatchNorm2d(out)) if stride != 1 or cin != out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(F.relu(out)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class OfficialResNet(nn.Module):
    """The official backbone (src/resnet.py, src/model.py): a zero padding of 1 pixel before
    everything, then a 7x7/2 convolution with padding 2 (ImageNet; with the pad, torchvision's
    stem), or for CIFAR a 3x3/1 convolution with padding 1 and no max-pool: 34 x 34 maps from 32 x
    32 images. Pooled features, no classifier."""

    def __init__(self, depths: list[int], bottleneck: bool, width: int, cifar: bool) -> None:
        super().__init__()
        self.conv1 = conv(3, width, 3, 1, 1) if cifar else conv(3, width, 7, 2, 2)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        cin, expansion = width, 4 if bottleneck else 1
        for i, depth in enumerate(depths):
            planes, blocks = width * 2**i, []
            for j in range(depth):
                blocks.append(Block(cin, planes, 2 if i and not j else 1, bottleneck))
                cin = planes * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(F.pad(x, (1, 1, 1, 1))))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3))


def official_projector(features: int, hidden: list[int], out: int) -> nn.Sequential:
    """src/model.py get_projection: [Linear (no bias), BatchNorm1d, ReLU] per hidden layer, Linear (bias)."""
    layers = []
    for width in hidden:
        layers += [nn.Linear(features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, out))


# --- the official loss, as facts ---------------------------------------------------------------
def iternorm(z: Tensor, iters: int = 4) -> Tensor:
    """methods/whitening.py, axis 0: each sample centred over its features, Sigma = Xc Xc^T / (D - 1)
    (N x N), trace-normalised, P <- 1.5 P - 0.5 P^3 Sigma_N four times from I, P Xc / sqrt(tr Sigma)."""
    xc = z - z.mean(1, keepdim=True)
    sigma = xc @ xc.T / (z.shape[1] - 1)
    trace = sigma.trace()
    p = torch.eye(len(z), dtype=z.dtype)
    for _ in range(iters):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (sigma / trace)
    return p @ xc / trace.sqrt()


def trace_loss(z: Tensor) -> Tensor:
    """methods/intl.py TL, axis 0: each sample's variance over its features, (v - 1)^2 summed."""
    x = z.T - z.T.mean(0)
    return ((x.square().sum(0) / (z.shape[1] - 1)) - 1).square().sum()


def nmse(a: Tensor, b: Tensor) -> Tensor:
    return 2 - 2 * (F.normalize(a) * F.normalize(b)).sum(-1).mean()


def intl_loss(queries: list[Tensor], key: Tensor | None, batch: int) -> Tensor:
    """methods/intl.py (key None: every view whitened, view 0 the anchor, TL of both) and
    methods/intl_m.py (a key from the momentum encoder, TL of the queries only), averaged over the
    pairs; trade-off 0.01 (log2 N - 3) with N the global batch."""
    beta = 0.01 * (math.log2(batch) - 3)
    if key is None:
        white = [iternorm(z) for z in queries]
        pairs = [nmse(t, white[0]) + beta * (trace_loss(t) + trace_loss(white[0])) for t in white[1:]]
    else:
        pairs = [nmse(iternorm(z), key) + beta * trace_loss(iternorm(z)) for z in queries]
    return sum(pairs) / len(pairs)


def official_lr(step: int, base: float, warmup: int, total: int) -> float:
    """main.py adjust_learning_rate: (t + 1) / W in the warm-up, then the cosine counted from t + 1
    so that the last step (t = T - 1) is at 0.001 x base."""
    if step < warmup:
        return base * (step + 1) / warmup
    q = 0.5 * (1 + math.cos(math.pi * (step - warmup + 1) / (total - warmup)))
    return base * q + 0.001 * base * (1 - q)


def official_momentum(step: int, base: float, total: int) -> float:
    """main.py adjust_momentum: m_k = 1 - (1 + cos(pi k / T)) (1 - base) / 2 at step k."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / total)) * (1.0 - base)


class OfficialINTL:
    """One recipe of the official code as a :class:`trajectory.Reference`: its model (in our key
    names: ``backbone.``, ``projector.``, and ``target.network.0/1.`` for the momentum encoder),
    SGD (momentum 0.9) over every parameter with the weight decay (CIFAR's main.py) or with 1-D
    parameters spared (ImageNet's main.py), its lr and momentum schedules; the momentum encoder
    updated before each forward with that step's m (here: after each step, with the next one's:
    the same update, as nothing reads the encoder in between)."""

    def __init__(self, backbone: OfficialResNet, projector: nn.Sequential, *, lr: float, weight_decay: float,
                 spare_1d: bool, batch: int, momentum: float | None = None) -> None:  # fmt: skip
        self.modules = nn.ModuleDict({"backbone": backbone, "projector": projector}).double()
        if momentum is not None:
            copies = nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(projector))  # intl_m.py's deepcopy
            self.modules["target"] = nn.ModuleDict({"network": copies})
            self.modules["target"].requires_grad_(False)
        online = [p for name, p in self.modules.named_parameters() if not name.startswith("target")]
        groups = (
            [{"params": [p for p in online if p.ndim == 1], "weight_decay": 0},
             {"params": [p for p in online if p.ndim != 1], "weight_decay": weight_decay}]
            if spare_1d else [{"params": online, "weight_decay": weight_decay}]
        )  # fmt: skip
        self.optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9)
        self.base_lr, self.batch, self.momentum = lr * batch / 256, batch, momentum

    def load(self, state: dict[str, Tensor]) -> None:
        self.modules.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in self.modules}, strict=True)
        self.modules.train()

    def _ema(self, m: float) -> None:
        with torch.no_grad():
            online = [*self.modules["backbone"].parameters(), *self.modules["projector"].parameters()]
            for target, param in zip(self.modules["target"].parameters(), online, strict=True):
                target.copy_(target * m + param * (1.0 - m))

    def step(self, views: list[Tensor], step: int) -> float:
        total, warmup = STEPS, 2 * PER_EPOCH
        for group in self.optimizer.param_groups:
            group["lr"] = official_lr(step, self.base_lr, warmup, total)
        if self.momentum is not None and step == 0:
            self._ema(official_momentum(0, self.momentum, total))
        backbone, projector = self.modules["backbone"], self.modules["projector"]
        self.optimizer.zero_grad()
        if self.momentum is None:
            loss = intl_loss([projector(backbone(v)) for v in views], None, self.batch)
        else:
            with torch.no_grad():
                key = iternorm(self.modules["target"]["network"](views[0]))
            loss = intl_loss([projector(backbone(v)) for v in views[1:]], key, self.batch)
        loss.backward()
        self.optimizer.step()
        if self.momentum is not None:
            self._ema(official_momentum(step + 1, self.momentum, total))
        return float(loss)

    def state(self) -> dict[str, Tensor]:
        return self.modules.state_dict()


# --- the recipes -------------------------------------------------------------------------------
def cifar_data(tmp_path: Path, classes: int) -> list[str]:
    from spectral_ssl.data.synthetic import write_cifar_folder

    write_cifar_folder(tmp_path / "data", train_images=80, test_images=10, num_classes=classes)
    return [f"--data.root={tmp_path / 'data'}", "--data.batch_size=32"]


def imagenet_data(tmp_path: Path, multi_crop: bool) -> list[str]:
    """32 JPEGs, batches of 16 on one device, the views at 64 px (multi-crop: 64, 64, 56, 48, 40, 32),
    as both sides are fed the same views: what is compared is the training, not the views."""
    from spectral_ssl.data.synthetic import write_image_folder

    write_image_folder(tmp_path / "data", per_class=16, size=(72, 80), corrupt=False)
    one_device = ["--trainer.devices=1", "--trainer.strategy=auto", "--trainer.sync_batchnorm=false"]
    sizes = [64, 64, 56, 48, 40, 32] if multi_crop else [64, 64]
    crops = "--data.augment=[" + ", ".join(f"{{size: {size}}}" for size in sizes) + "]"
    return [f"--data.root={tmp_path / 'data'}", "--data.batch_size=16", *one_device, "--data.image_size=64", crops]


RECIPES = {
    # name: (shrinking overrides (data aside), reference options)
    "cifar10/intl": dict(width=16, projector=[64, 64, 64], depths=[2, 2, 2, 2], bottleneck=False, cifar=True,
                         lr=0.3, weight_decay=1e-4, spare_1d=False, momentum=None),
    "cifar100/intl": dict(width=16, projector=[64, 64, 64], depths=[2, 2, 2, 2], bottleneck=False, cifar=True,
                          lr=0.3, weight_decay=1e-4, spare_1d=False, momentum=None),
    "imagenet100/intl": dict(width=16, projector=[64, 64, 128], depths=[2, 2, 2, 2], bottleneck=False, cifar=False,
                             lr=0.5, weight_decay=2.5e-5, spare_1d=True, momentum=None),
    "imagenet/intl": dict(width=8, projector=[64, 64, 64], depths=[3, 4, 6, 3], bottleneck=True, cifar=False,
                          lr=0.3, weight_decay=1e-5, spare_1d=True, momentum=None),
    "imagenet/intl_multicrop": dict(width=8, projector=[64, 64, 64], depths=[3, 4, 6, 3], bottleneck=True,
                                    cifar=False, lr=0.3, weight_decay=1e-5, spare_1d=True, momentum=0.996),
}  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_intl_recipe_trains_as_the_official_code_step_by_step(recipe, tmp_path):
    options = RECIPES[recipe]
    data = (
        cifar_data(tmp_path, 100 if recipe.startswith("cifar100") else 10)
        if recipe.startswith("cifar")
        else imagenet_data(tmp_path, multi_crop=options["momentum"] is not None)
    )
    overrides = [
        *data,
        f"--model.backbone.width={options['width']}",
        f"--model.projector_dims={options['projector']}",
        f"--trainer.max_epochs={STEPS // PER_EPOCH}",
    ]
    record = record_recipe(recipe, overrides, tmp_path / "runs", steps=STEPS)
    backbone = OfficialResNet(options["depths"], options["bottleneck"], options["width"], options["cifar"])
    features = options["width"] * 8 * (4 if options["bottleneck"] else 1)
    projector = official_projector(features, options["projector"][:-1], options["projector"][-1])
    batch = 32 if recipe.startswith("cifar") else 16
    reference = OfficialINTL(
        backbone, projector, lr=options["lr"], weight_decay=options["weight_decay"], spare_1d=options["spare_1d"],
        batch=batch, momentum=options["momentum"],
    )  # fmt: skip
    parameters = {k for k in record.initial if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    rows = compare(record, reference, parameters)
    print(recipe, "\n" + table(rows))
    assert record.lrs == pytest.approx(
        [official_lr(t, options["lr"] * batch / 256, 2 * PER_EPOCH, STEPS) for t in range(STEPS)], rel=1e-12
    )
    for row in rows:
        assert row.parameters < ROUND_OFF and row.buffers < ROUND_OFF and row.loss < ROUND_OFF, table(rows)


# --- the baselines against solo-learn (commit 9187ea3), its behaviour as facts --------------------
def solo_head(dims: list[int], batch_norm: bool = True) -> nn.Sequential:
    """solo-learn's heads: [Linear (bias), BatchNorm1d, ReLU] per hidden width (SimCLR's without the
    BatchNorm), then Linear (bias)."""
    layers = []
    for width in dims[1:-1]:
        layers += [nn.Linear(dims[0] if not layers else layers[-3 if batch_norm else -2].out_features, width)]
        layers += [nn.BatchNorm1d(width), nn.ReLU()] if batch_norm else [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


def solo_barlow(z1: Tensor, z2: Tensor, lamb: float = 0.0051, scale_loss: float = 0.1) -> Tensor:
    n, d = z1.shape
    bn = lambda z: F.batch_norm(z, None, None, training=True)  # noqa: E731 - BatchNorm1d(affine=False)
    cdif = (bn(z1).T @ bn(z2) / n - torch.eye(d, dtype=z1.dtype)).square()
    return scale_loss * (cdif.diagonal().sum() + lamb * (cdif.sum() - cdif.diagonal().sum()))


def solo_vicreg(z1: Tensor, z2: Tensor) -> Tensor:
    n, d = z1.shape
    std = lambda z: torch.sqrt(z.var(dim=0) + 1e-4)  # noqa: E731
    variance = F.relu(1 - std(z1)).mean() + F.relu(1 - std(z2)).mean()  # summed over the two views
    off = ~torch.eye(d, dtype=torch.bool)
    cov = lambda z: ((z - z.mean(0)).T @ (z - z.mean(0)) / (n - 1))[off].square().sum() / d  # noqa: E731
    return 25 * F.mse_loss(z1, z2) + 25 * variance + cov(z1) + cov(z2)


def solo_simclr(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = torch.exp(z @ z.T / temperature)
    index = torch.arange(len(z1)).repeat(2)
    positive = (index[:, None] == index[None]) & ~torch.eye(len(z), dtype=torch.bool)
    negative = index[:, None] != index[None]
    pos, neg = (sim * positive).sum(1), (sim * negative).sum(1)
    return -torch.log(pos / (pos + neg)).mean()


def solo_whiten(x: Tensor) -> Tensor:
    """solo/utils/whitening.py Whitening2d (eps 0): x L^-T with L L^T the unbiased covariance."""
    xn = x - x.mean(0)
    lower = torch.linalg.cholesky(xn.T @ xn / (len(x) - 1))
    return xn @ torch.linalg.solve_triangular(lower, torch.eye(x.shape[1], dtype=x.dtype), upper=False).T


def solo_wmse(z1: Tensor, z2: Tensor) -> Tensor:
    """One sub-batch (the whole batch): wmse_loss_func(x0, x1), the second view detached."""
    return 2 - 2 * F.cosine_similarity(solo_whiten(z1), solo_whiten(z2).detach(), dim=-1).mean()


def solo_lars_step(groups: list[dict], eta: float = 0.02) -> None:
    """solo/utils/lars.py LARS (clip_lr, exclude_bias_n_norm) with SGD momentum 0.9, one step."""
    with torch.no_grad():
        for group in groups:
            for p in group["params"]:
                d_p, state = p.grad, group["state"].setdefault(id(p), {})
                if p.ndim != 1 and p.norm() != 0 and p.grad.norm() != 0:
                    lars_lr = eta * p.norm() / (p.grad.norm() + p.norm() * group["weight_decay"] + 1e-8)
                    lars_lr = min(lars_lr / group["lr"], 1)
                    d_p = (d_p + group["weight_decay"] * p) * lars_lr
                buf = state["buf"] = d_p.clone() if "buf" not in state else state["buf"].mul_(0.9).add_(d_p)
                p.add_(buf, alpha=-group["lr"])


def bolts_lr(step: int, peak: float, start: float, warmup: int) -> float:
    """Lightning Bolts' LinearWarmupCosineAnnealingLR in its warm-up: start + t (peak - start) / (W - 1)."""
    return start + step * (peak - start) / (warmup - 1)


class SoloMethod:
    """A solo-learn CIFAR recipe as a :class:`trajectory.Reference`: its network and heads (in our
    key names), its loss, LARS (Adam for W-MSE) and the Bolts warm-up; BYOL's target moved after
    step k with tau_{k-1} (solo's MomentumUpdater)."""

    def __init__(self, name: str, features: int, batch: int, total: int) -> None:
        self.name, self.batch, self.total = name, batch, total
        backbone = OfficialResNet([2, 2, 2, 2], False, 16, cifar=True)
        heads = {
            "barlow_twins": {"projector": solo_head([features, 64, 64, 64])},
            "vicreg": {"projector": solo_head([features, 64, 64, 64])},
            "simclr": {"projector": solo_head([features, 64, 32], batch_norm=False)},
            "wmse": {"projector": solo_head([features, 64, 16])},
            "byol": {"projector": solo_head([features, 64, 32]), "predictor": solo_head([32, 64, 32])},
        }[name]
        self.modules = nn.ModuleDict({"backbone": backbone, **heads}).double()
        if name == "byol":
            copies = nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(heads["projector"]))
            self.modules["target"] = nn.ModuleDict({"network": copies}).double().requires_grad_(False)
        self.lr, self.weight_decay = {
            "barlow_twins": (0.3, 1e-4), "vicreg": (0.3, 1e-4), "simclr": (0.4, 1e-5), "byol": (1.0, 1e-5),
            "wmse": (0.002, 1e-6),
        }[name]  # fmt: skip
        self.start = 0.0 if name == "wmse" else 3e-5
        online = [p for key, p in self.modules.named_parameters() if not key.startswith("target")]
        if name == "wmse":  # Adam, weight decay on every parameter (exclude_bias_n_norm_wd: False)
            self.optimizer = torch.optim.Adam(online, lr=0, weight_decay=self.weight_decay)
        else:
            self.groups = [{"params": online, "weight_decay": self.weight_decay, "state": {}}]

    def load(self, state: dict[str, Tensor]) -> None:
        self.modules.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in self.modules}, strict=True)
        self.modules.train()

    def step(self, views: list[Tensor], step: int) -> float:
        scale = self.batch / 256  # the shrunk run's lr rule on both sides (x 1 at solo's batch of 256)
        lr = bolts_lr(step, self.lr * scale, self.start * scale, 10 * PER_EPOCH)
        online = [p for key, p in self.modules.named_parameters() if not key.startswith("target")]
        for p in online:
            p.grad = None
        backbone, projector = self.modules["backbone"], self.modules["projector"]
        z1, z2 = (projector(backbone(v)) for v in views)
        if self.name == "byol":
            with torch.no_grad():
                t1, t2 = (self.modules["target"]["network"](v) for v in views)
            p1, p2 = self.modules["predictor"](z1), self.modules["predictor"](z2)
            cos = lambda p, t: 2 - 2 * F.cosine_similarity(p, t, dim=-1).mean()  # noqa: E731
            loss = cos(p2, t1) + cos(p1, t2)
        else:
            loss = {"barlow_twins": solo_barlow, "vicreg": solo_vicreg, "simclr": solo_simclr, "wmse": solo_wmse}[
                self.name
            ](z1, z2)
        loss.backward()
        if self.name == "wmse":
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        else:
            self.groups[0]["lr"] = lr
            solo_lars_step(self.groups)
        if self.name == "byol":  # after step k, tau_{k-1}: 0.99 first
            tau = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * step / self.total) + 1) / 2
            with torch.no_grad():
                pairs = zip(self.modules["target"].parameters(), [*backbone.parameters(), *projector.parameters()])
                for target, param in pairs:
                    target.copy_(tau * target + (1 - tau) * param)
        return loss.item()

    def state(self) -> dict[str, Tensor]:
        return self.modules.state_dict()


BASELINES = {
    "barlow_twins": ["--model.projector_dims=[64,64,64]"],
    "vicreg": ["--model.projector_dims=[64,64,64]"],
    "simclr": ["--model.projector_dims=[64,32]"],
    "byol": ["--model.projector_dims=[64,32]", "--model.predictor_hidden_dims=[64]"],
    "wmse": ["--model.projector_dims=[64,16]", "--model.w_size=32"],
}
BASELINE_STEPS = 3  # inside the 10-epoch warm-up (20 steps here); the run is bounded by them, T = 3


@pytest.mark.parametrize("method", BASELINES)
def test_each_solo_learn_cifar_recipe_takes_solo_learns_first_steps(method, tmp_path):
    """The baselines' CIFAR configs name solo-learn: their first steps equal solo-learn's training
    written out (network, heads, loss, optimizer, warm-up, BYOL's target), from the same weights
    on the same views."""
    overrides = [
        *cifar_data(tmp_path, 10), "--model.backbone.width=16", *BASELINES[method], "--trainer.max_epochs=15",
        f"--trainer.max_steps={BASELINE_STEPS}",
    ]  # fmt: skip
    record = record_recipe(f"cifar10/{method}", overrides, tmp_path / "runs", steps=BASELINE_STEPS)
    reference = SoloMethod(method, 16 * 8, batch=32, total=BASELINE_STEPS)
    parameters = {k for k in record.initial if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    rows = compare(record, reference, parameters)
    print(method, "\n" + table(rows))
    for row in rows:
        assert row.parameters < ROUND_OFF and row.buffers < ROUND_OFF and row.loss < ROUND_OFF, table(rows)

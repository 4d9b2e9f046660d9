"""Writes configs/<dataset>/<method>.yaml from the published hyperparameters below.

The tables here are the single source of the per-dataset configs (a test checks that the
committed YAML files equal what this script writes). Run ``python tools/write_configs.py``
after editing them. Each entry names where its numbers come from.

Multi-GPU configs use DDP with ``sync_batchnorm`` (backbone and projector BatchNorm statistics
over the global batch, as the official INTL code). Batch sizes are global (images per step over
all GPUs); a config sets ``trainer.devices`` and the per-device ``data.batch_size`` = global /
devices. Learning rates are base rates for a global batch of 256 (the optimizer scales them by
global batch / 256), so a config keeps its meaning when you change the GPU count: set
data.batch_size to global / your GPUs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def augment(size, *, scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), blur=0.0, solarize=0.0):
    return {"size": size, "scale": list(scale), "jitter": list(jitter), "blur_p": blur, "solarize_p": solarize}


CIFAR_VIEWS = [augment(32), augment(32, solarize=0.2)]  # INTL / solo-learn: no blur on 32 px
IMAGENET_VIEWS = [augment(224, blur=1.0), augment(224, blur=0.1, solarize=0.2)]  # BYOL's asymmetric pair
SIMCLR_IMAGENET_VIEWS = [augment(224, jitter=(0.8, 0.8, 0.8, 0.2), blur=0.5)] * 2
MULTI_CROP_VIEWS = (  # INTL's ImageNet multi-crop: 2 x 224 + 192/160/128/96, blur 0.5 and solarize 0.1 everywhere
    [augment(224, scale=(0.2, 1.0), blur=0.5, solarize=0.1)] * 2
    + [
        augment(s, scale=(lo, hi), blur=0.5, solarize=0.1)
        for s, lo, hi in ((192, 0.171, 0.857), (160, 0.143, 0.714), (128, 0.114, 0.571), (96, 0.086, 0.429))
    ]
)

# Monitor budgets (images): the kNN bank and queries, the spectrum's and the online probe's held-out
# images are class-balanced subsets of at most these sizes, so a monitor's cost does not grow with
# the dataset (ImageNet: 100 bank images a class, 10 queries a class; CIFAR: the whole sets).
MONITORS = {
    "cifar10": dict(max_bank=50_000, max_queries=10_000),
    "cifar100": dict(max_bank=50_000, max_queries=10_000),
    "imagenet100": dict(max_bank=50_000, max_queries=5_000),
    "imagenet": dict(max_bank=100_000, max_queries=10_000),
}
HELD_OUT_IMAGES = 10_000  # spectrum and online probe: at least the widest embedding (8192)

DATASETS = {
    "cifar10": dict(
        data={
            "class_path": "spectral_ssl.data.CIFARDataModule",
            "init_args": {"root": "data", "num_classes": 10, "augment": CIFAR_VIEWS},
        },
        backbone={"name": "resnet18", "cifar_stem": True},
        devices=1,
        precision="32-true",
        views=CIFAR_VIEWS,
    ),
    "cifar100": dict(
        data={
            "class_path": "spectral_ssl.data.CIFARDataModule",
            "init_args": {"root": "data", "num_classes": 100, "augment": CIFAR_VIEWS},
        },
        backbone={"name": "resnet18", "cifar_stem": True},
        devices=1,
        precision="32-true",
        views=CIFAR_VIEWS,
    ),
    "imagenet100": dict(
        data={
            "class_path": "spectral_ssl.data.ImageFolderDataModule",
            "init_args": {"root": "data/imagenet100", "augment": IMAGENET_VIEWS},
        },
        backbone={"name": "resnet18"},
        devices=2,
        precision="bf16-mixed",
        views=IMAGENET_VIEWS,
    ),
    "imagenet": dict(
        data={
            "class_path": "spectral_ssl.data.ImageFolderDataModule",
            "init_args": {"root": "data/imagenet", "augment": IMAGENET_VIEWS},
        },
        backbone={"name": "resnet50"},
        devices=8,
        precision="bf16-mixed",
        views=IMAGENET_VIEWS,
    ),
}


def opt(name, lr, wd, *, exclude=True, warmup=10, min_lr_ratio=0.0):
    return {
        "name": name,
        "lr": lr,
        "weight_decay": wd,
        "exclude_bias_and_norm": exclude,
        "warmup_epochs": warmup,
        "min_lr_ratio": min_lr_ratio,
    }


INTL_OPT_CIFAR = opt("sgd", 0.3, 1e-4, exclude=False, warmup=2, min_lr_ratio=0.001)
SOLO = "solo-learn's scripts/pretrain/{d}/{m}.yaml (ResNet-18)"
# method -> dataset -> (source, epochs, global batch, model init_args, optimizer, overrides)
METHODS = {
    "intl": {
        "cifar10": (
            "official INTL code, winci-ai/INTL cifar/cfg.py + scripts/cifar10.sh",
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048]},
            INTL_OPT_CIFAR,
            {},
        ),
        "cifar100": (
            "official INTL code, winci-ai/INTL cifar/cfg.py + scripts/cifar100.sh",
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048]},
            INTL_OPT_CIFAR,
            {},
        ),
        "imagenet100": (
            "official INTL code, winci-ai/INTL scripts/in100.sh",
            400,
            128,
            {"projector_dims": [4096, 4096, 8192]},
            opt("sgd", 0.5, 2.5e-5, warmup=2, min_lr_ratio=0.001),
            {},
        ),
        "imagenet": (
            "official INTL code, winci-ai/INTL scripts/ep800.sh (73.1% without multi-crop)",
            800,
            256,
            {"projector_dims": [8192, 8192, 8192], "backbone": {"zero_init_residual": True}},
            opt("sgd", 0.3, 1e-5, warmup=2, min_lr_ratio=0.001),
            {},
        ),
    },
    "barlow_twins": {
        "cifar10": (
            SOLO.format(d="cifar", m="barlow"),
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048], "lambd": 0.0051},
            opt("lars", 0.3, 1e-4, warmup=10),
            {},
        ),
        "cifar100": (
            SOLO.format(d="cifar", m="barlow"),
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048], "lambd": 0.0051},
            opt("lars", 0.3, 1e-4, warmup=10),
            {},
        ),
        "imagenet100": (
            SOLO.format(d="imagenet-100", m="barlow"),
            400,
            256,
            {"projector_dims": [4096, 4096, 4096], "lambd": 0.0051},
            opt("lars", 0.3, 1.5e-6, warmup=10),
            {},
        ),
        "imagenet": (
            "Barlow Twins paper (Zbontar et al. 2021), Sec. 4 / facebookresearch/barlowtwins",
            1000,
            2048,
            {"projector_dims": [8192, 8192, 8192], "lambd": 0.0051},
            opt("lars", 0.2, 1.5e-6, warmup=10),
            {},
        ),
    },
    "vicreg": {
        "cifar10": (
            SOLO.format(d="cifar", m="vicreg"),
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048]},
            opt("lars", 0.3, 1e-4, warmup=10),
            {"solarize": 0.1},
        ),
        "cifar100": (
            SOLO.format(d="cifar", m="vicreg"),
            1000,
            256,
            {"projector_dims": [2048, 2048, 2048]},
            opt("lars", 0.3, 1e-4, warmup=10),
            {"solarize": 0.1},
        ),
        "imagenet100": (
            SOLO.format(d="imagenet-100", m="vicreg"),
            400,
            256,
            {"projector_dims": [2048, 2048, 2048]},
            opt("lars", 0.3, 1e-4, warmup=10),
            {},
        ),
        "imagenet": (
            "VICReg paper (Bardes et al. 2022), Appendix C / facebookresearch/vicreg",
            1000,
            2048,
            {"projector_dims": [8192, 8192, 8192]},
            opt("lars", 0.2, 1e-6, warmup=10),
            {},
        ),
    },
    "wmse": {
        "cifar10": (
            SOLO.format(d="cifar", m="wmse"),
            1000,
            256,
            {"projector_dims": [1024, 64], "w_size": 128, "w_iter": 1},
            opt("adam", 3e-3, 1e-6, warmup=2),
            {"scale": (0.2, 1.0), "solarize": 0.0},
        ),
        "cifar100": (
            SOLO.format(d="cifar", m="wmse"),
            1000,
            256,
            {"projector_dims": [1024, 64], "w_size": 128, "w_iter": 1},
            opt("adam", 3e-3, 1e-6, warmup=2),
            {"scale": (0.2, 1.0), "solarize": 0.0},
        ),
        "imagenet100": (
            SOLO.format(d="imagenet-100", m="wmse"),
            400,
            256,
            {"projector_dims": [1024, 64], "w_size": 128, "w_iter": 1},
            opt("adam", 2e-3, 1e-6, warmup=2),
            {},
        ),
        "imagenet": (
            "W-MSE paper (Ermolov et al. 2021) ImageNet setting: embedding 128, w_size 256 (LARS as the "
            "other large-batch baselines)",
            400,
            1024,
            {"projector_dims": [1024, 128], "w_size": 256, "w_iter": 1},
            opt("lars", 0.2, 1e-6, warmup=10),
            {},
        ),
    },
    "simclr": {
        "cifar10": (
            SOLO.format(d="cifar", m="simclr"),
            1000,
            256,
            {"projector_dims": [2048, 256], "temperature": 0.2},
            opt("lars", 0.4, 1e-5, warmup=10),
            {"solarize": 0.0},
        ),
        "cifar100": (
            SOLO.format(d="cifar", m="simclr"),
            1000,
            256,
            {"projector_dims": [2048, 256], "temperature": 0.2},
            opt("lars", 0.4, 1e-5, warmup=10),
            {"solarize": 0.0},
        ),
        "imagenet100": (
            SOLO.format(d="imagenet-100", m="simclr"),
            400,
            256,
            {"projector_dims": [2048, 256], "temperature": 0.2},
            opt("lars", 0.4, 1e-5, warmup=10),
            {"views": SIMCLR_IMAGENET_VIEWS},
        ),
        "imagenet": (
            "SimCLR paper (Chen et al. 2020), Appendix B.9: LARS 0.3 x batch/256, T 0.1",
            1000,
            4096,
            {"projector_dims": [2048, 128], "temperature": 0.1},
            opt("lars", 0.3, 1e-6, warmup=10),
            {"views": SIMCLR_IMAGENET_VIEWS},
        ),
    },
    "byol": {
        "cifar10": (
            SOLO.format(d="cifar", m="byol"),
            1000,
            256,
            {"projector_dims": [4096, 256], "predictor_hidden_dims": [4096], "base_momentum": 0.99},
            opt("lars", 1.0, 1e-5, warmup=10),
            {},
        ),
        "cifar100": (
            SOLO.format(d="cifar", m="byol"),
            1000,
            256,
            {"projector_dims": [4096, 256], "predictor_hidden_dims": [4096], "base_momentum": 0.99},
            opt("lars", 1.0, 1e-5, warmup=10),
            {},
        ),
        "imagenet100": (
            SOLO.format(d="imagenet-100", m="byol"),
            400,
            256,
            {"projector_dims": [4096, 256], "predictor_hidden_dims": [4096], "base_momentum": 0.99},
            opt("lars", 1.0, 1e-5, warmup=10),
            {},
        ),
        "imagenet": (
            "BYOL paper (Grill et al. 2020), Sec. 3.2: LARS 0.2 x batch/256, tau 0.996",
            1000,
            4096,
            {"projector_dims": [4096, 256], "predictor_hidden_dims": [4096], "base_momentum": 0.996},
            opt("lars", 0.2, 1.5e-6, warmup=10),
            {},
        ),
    },
}
METHODS["st"] = {
    dataset: (
        f"INTL paper (Weng et al., ICLR 2024) Sec. 3: ST_p with p = -1/2 (whitening); vary model.power for "
        f"its ablation. Schedule: {source}",
        epochs,
        batch,
        {**model, "power": -0.5, "method": "eigh", "axis": 1 if dataset.startswith("cifar") else 0, "eps": 1.0e-5},
        optimizer,
        overrides,
    )
    for dataset, (source, epochs, batch, model, optimizer, overrides) in METHODS["intl"].items()
}
CLASSES = {
    "intl": "INTL",
    "st": "SpectralTransform",
    "barlow_twins": "BarlowTwins",
    "vicreg": "VICReg",
    "wmse": "WMSE",
    "simclr": "SimCLR",
    "byol": "BYOL",
}


def build(dataset: str, method: str) -> tuple[str, dict]:
    source, epochs, batch, model, optimizer, overrides = METHODS[method][dataset]
    spec = DATASETS[dataset]
    devices = spec["devices"]
    data = copy.deepcopy(spec["data"])
    views = copy.deepcopy(overrides.get("views", spec["views"]))
    for view in views:
        view.update(
            {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items() if k in ("scale", "solarize")}
        )
        if "solarize" in overrides:
            view["solarize_p"] = view.pop("solarize")
    data["init_args"].update(augment=views, batch_size=batch // devices)
    backbone = {**spec["backbone"], **model.get("backbone", {})}
    init_args = {"backbone": backbone, **{k: v for k, v in model.items() if k != "backbone"}, "optimizer": optimizer}
    config = {
        "run_name": f"{dataset}_{method}",
        "seed_everything": 0,
        "trainer": {
            "max_epochs": epochs,
            "accelerator": "auto",
            "devices": devices,
            "num_nodes": 1,
            "strategy": "ddp" if devices > 1 else "auto",
            "sync_batchnorm": devices > 1,
            "precision": spec["precision"],
            "log_every_n_steps": 50,
        },
        "model": {"class_path": f"spectral_ssl.methods.{CLASSES[method]}", "init_args": init_args},
        "data": data,
        "knn": {"k": 20, "temperature": 0.07, "every_n_epochs": 10, **MONITORS[dataset]},
        "spectrum": {"every_n_epochs": 10, "max_images": HELD_OUT_IMAGES},
        "online_probe": {"every_n_epochs": 10, "max_images": HELD_OUT_IMAGES},
    }
    header = (
        f"# {CLASSES[method]} on {dataset}, ResNet-{backbone['name'][6:]}: {epochs} epochs, global batch {batch} "
        f"({devices} device(s) x {batch // devices}).\n# Source: {source}.\n"
        f"# spectral-ssl pretrain --config configs/{dataset}/{method}.yaml --data.init_args.root=<dataset folder>\n"
        "# Written by tools/write_configs.py from its tables; edit those, then re-run it.\n"
    )
    return header, config


def build_multi_crop() -> tuple[str, dict]:
    header, config = build("imagenet", "intl")
    init = config["model"]["init_args"]
    init["momentum"] = 0.996
    init["optimizer"]["lr"] = 0.3
    config["run_name"] = "imagenet_intl_multicrop"
    config["data"]["init_args"]["augment"] = copy.deepcopy(MULTI_CROP_VIEWS)
    header = (
        "# INTL on ImageNet, ResNet-50, multi-crop (2 x 224 + 192/160/128/96) with a momentum (EMA 0.996) key\n"
        "# encoder: the setting behind 76.6% linear top-1 at 800 epochs (73.5 / 75.2 / 76.1 at 100 / 200 / 400\n"
        "# epochs with lr 0.5 / 0.4 / 0.4). Source: winci-ai/INTL scripts/ep800_multi-crop_ema.sh, methods/intl_m.py.\n"
        "# spectral-ssl pretrain --config configs/imagenet/intl_multicrop.yaml --data.init_args.root=<ImageNet>\n"
        "# Written by tools/write_configs.py from its tables; edit those, then re-run it.\n"
    )
    return header, config


VIT_SOURCE = (
    "ViT-S recipe: AdamW, lr 3e-4 x global batch / 256, weight decay 0.1, 10 warm-up epochs then cosine "
    "(solo-learn scripts/pretrain/imagenet-100/mocov3_vit.yaml); biases, norms, position embedding and "
    "class token spared from weight decay (DINO's get_params_groups, timm's no_weight_decay)"
)
VIT_OPT = opt("adamw", 3e-4, 0.1, warmup=10)


def build_vit(dataset: str, method: str, multi_crop: bool = False) -> tuple[str, dict]:
    """The ResNet config of ``dataset`` x ``method`` with ViT-Small (patch 4 on CIFAR's 32 px,
    16 at ImageNet's 224) and the ViT optimizer recipe; the method's own options stay."""
    header, config = build_multi_crop() if multi_crop else build(dataset, method)
    init = config["model"]["init_args"]
    init["backbone"] = {"name": "vit_small", "patch_size": 4 if dataset.startswith("cifar") else 16}
    init["optimizer"] = copy.deepcopy(VIT_OPT)
    name = f"{method}_vit_small"
    config["run_name"] = f"{dataset}_{name}"
    first = (
        header.splitlines()[0]
        .replace("ResNet-50", "ViT-S/16")
        .replace("ResNet-18", "ViT-S/4" if dataset.startswith("cifar") else "ViT-S/16")
    )
    header = (
        f"{first}\n# Source: the method's settings as configs/{dataset}/{method}.yaml; {VIT_SOURCE}.\n"
        f"# spectral-ssl pretrain --config {dataset}/{name} --data.init_args.root=<dataset folder>\n"
        "# Written by tools/write_configs.py from its tables; edit those, then re-run it.\n"
    )
    return header, config


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, lists of plain values on one line, no YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True

    def represent_list(self, data):
        flow = all(not isinstance(item, (dict, list)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def all_configs() -> dict[Path, str]:
    files = {}
    entries = [((d, m), build(d, m)) for m in METHODS for d in DATASETS]
    entries.append((("imagenet", "intl_multicrop"), build_multi_crop()))
    entries += [((d, f"{m}_vit_small"), build_vit(d, m)) for m in METHODS for d in DATASETS]
    entries.append((("imagenet", "intl_multicrop_vit_small"), build_vit("imagenet", "intl_multicrop", multi_crop=True)))
    for (dataset, method), (header, config) in entries:
        files[Path("configs") / dataset / f"{method}.yaml"] = header + yaml.dump(
            config, Dumper=_Dumper, sort_keys=False, width=120
        )
    return files


if __name__ == "__main__":
    for path, text in all_configs().items():
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(text)
        print("wrote", path)

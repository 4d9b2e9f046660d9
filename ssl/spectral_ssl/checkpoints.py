"""Reading checkpoints, in one place: Lightning checkpoints of a run, pretraining checkpoints
for evaluation and export, and exported backbones. Everything is loaded with
``weights_only=True`` (or from safetensors): a file from elsewhere is never unpickled beyond
plain tensors and containers. A file that is damaged, of another kind, or of another model gets
an error naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from .models import BackboneConfig, NormOptions, Projector

METADATA_KEY = "spectral_ssl"
"""The safetensors header entry that holds an exported backbone's description."""


def _first_line(error: Exception) -> str:
    """``Type: first line of the message``: what a loader's error says, without its traceback."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def unreadable_reason(path: Path) -> str | None:
    """None when ``path`` is a Lightning checkpoint that loads, else why not (cheap: memory-mapped)."""
    if not path.exists():
        return "no such file (or a link to a missing one)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, foreign pickle: anything that would stop Lightning's load
        return _first_line(error)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint"
    return None


def training_loops(path: Path) -> dict[str, Any]:
    """The ``loops`` entry of a Lightning checkpoint (where in training it was written), memory-mapped."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("loops", {})


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that names every mismatched key and shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state_dict[k].shape)} in file vs {tuple(own[k].shape)} in model"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    if missing or unexpected or shapes:

        def first(items):
            return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

        problems = [
            f"{name}: {first(items)}"
            for name, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        raise ValueError(
            f"{source} does not fit a {type(model).__name__} built for it (another architecture, "
            f"norm or width?) — " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def load_tensors(path: Path):
    """``torch.load(weights_only=True)`` with an error that says which file failed and why."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, other formats, pickles that are not plain tensors
        raise ValueError(
            f"{path} cannot be read as a PyTorch checkpoint with weights_only=True: it is truncated, "
            f"another kind of file, or holds pickled objects beyond tensors ({_first_line(error)})"
        ) from error


def read_pretraining_checkpoint(path: str | Path) -> dict:
    """A pretraining checkpoint (``spectral-ssl pretrain``'s ``.ckpt``), checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = load_tensors(path)
    if (
        not isinstance(checkpoint, dict)
        or "backbone" not in checkpoint.get("hyper_parameters", {})
        or "state_dict" not in checkpoint
    ):
        raise ValueError(
            f"{path} is not a spectral-ssl pretraining checkpoint (no state_dict with backbone hyperparameters)"
        )
    return checkpoint


def training_data(path: str | Path | None) -> tuple[dict | None, dict | None]:
    """What a checkpoint or an exported backbone says of the data it was trained on: (its dataset
    as a config section, ``{"class_path": ..., "init_args": {...}}``, what ``--data`` takes; its
    statistics, ``{"mean", "std", "image_size", "num_classes"}``), each None where it does not say
    (checkpoints written before they carried them, a model trained outside the commands, no path or
    one that is no file: what reads it next names that)."""
    if not path or not Path(path).is_file():
        return None, None
    path = Path(path)
    if path.suffix in (".safetensors", ".pth"):
        data = read_backbone_metadata(path).get("data") or {}
        return data.get("config"), {k: v for k, v in data.items() if k != "config"} or None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return data_config(checkpoint.get("datamodule_hyper_parameters")), checkpoint.get("data_statistics")


def check_same_data(statistics: Mapping | None, image_size: int, num_classes: int | None, source: str) -> None:
    """Refuses evaluation data whose image size or number of classes is not the training data's
    (``statistics``, from :func:`training_data`): a CIFAR checkpoint evaluated on the digits
    would print a number that means nothing. ValueError naming both and the way to do it on purpose."""
    if not statistics:
        return
    trained = (statistics["image_size"], statistics.get("num_classes"))
    if image_size != trained[0] or (num_classes and trained[1] and num_classes != trained[1]):

        def images(size, classes) -> str:
            return f"{size} px images" + (f" of {classes} classes" if classes else "")

        raise ValueError(
            f"{source} was trained on {images(*trained)}; the data given has {images(image_size, num_classes)}. Leave "
            "--data out to evaluate on its own dataset (its root: --data.init_args.root=...), or add --other_data=true "
            "to evaluate on this one on purpose"
        )


def data_config(hparams: Mapping | None) -> dict | None:
    """Lightning's ``datamodule_hyper_parameters`` (the class in ``_class_path``) as a config section."""
    if not hparams or "_class_path" not in hparams:
        return None
    return {"class_path": hparams["_class_path"], "init_args": {k: v for k, v in hparams.items() if k[0] != "_"}}


def submodule_state(checkpoint: Mapping, prefix: str) -> dict[str, Tensor]:
    """The tensors of one submodule (``"backbone."``) of a checkpoint, without the prefix."""
    return {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def backbone_state(checkpoint: Mapping, source: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The backbone's tensors of a pretraining checkpoint and the metadata that rebuilds it
    (:func:`build_from_metadata`; what ``spectral-ssl export`` writes beside the weights)."""
    metadata = {
        "format": "spectral-ssl backbone",
        "version": 1,
        "backbone": {k: v for k, v in checkpoint["hyper_parameters"]["backbone"].items() if k != "weights"},
        "source": str(source),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    if statistics := checkpoint.get("data_statistics"):  # the training data: its config and its input's statistics
        metadata["data"] = {"config": data_config(checkpoint.get("datamodule_hyper_parameters")), **statistics}
    return submodule_state(checkpoint, "backbone."), metadata


def build_from_metadata(metadata: Mapping) -> nn.Module:
    """The backbone an exported or checkpointed description names, with fresh weights."""
    config = dict(metadata["backbone"])
    try:
        config["norm_options"] = NormOptions(**config.get("norm_options", {}))
        return BackboneConfig(**config).build()
    except TypeError as error:
        raise ValueError(
            f"the backbone description {metadata['backbone']} does not match this version of spectral-ssl ({error})"
        ) from error


def load_safetensors(path: Path, fix: str = "") -> dict[str, Tensor]:
    """The tensors of a safetensors file; a damaged or foreign file is a ValueError naming it (and
    ``fix``, how to mend it, when given)."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' own error type: a damaged or foreign file
        raise ValueError(f"{path} is not a readable safetensors file ({error}){'; ' + fix if fix else ''}") from error


def read_backbone_metadata(path: str | Path) -> dict:
    """The description ``spectral-ssl export`` wrote for an exported backbone: in the header of
    ``backbone.safetensors``, or in the ``backbone.json`` beside ``backbone.pth``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
        except Exception as error:  # safetensors' own error type: a damaged or foreign file
            raise ValueError(
                f"{path} is not a readable safetensors file ({error}); export it again with spectral-ssl export"
            ) from error
        if METADATA_KEY not in header:
            raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by spectral-ssl export")
        return json.loads(header[METADATA_KEY])
    meta_path = path.with_name("backbone.json") if path.name == "backbone.pth" else path.with_suffix(".json")
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} (the metadata written beside {path.name} by spectral-ssl export) is missing"
        )
    return json.loads(meta_path.read_text())


def load_backbone(path: str | Path) -> nn.Module:
    """Rebuild an exported backbone from ``backbone.safetensors`` (metadata in its header) or from
    ``backbone.pth`` + the ``backbone.json`` beside it, and load its weights. Nothing is unpickled.
    Its input, as timm models describe theirs, is ``model.pretrained_cfg`` (``mean``, ``std``,
    ``input_size``: the training data's; ``timm.data.resolve_data_config(model=model)`` reads it),
    when the export knew the data."""
    path = Path(path)
    metadata = read_backbone_metadata(path)
    if path.suffix == ".safetensors":
        state = load_safetensors(path, fix="export it again with spectral-ssl export")
    else:
        state = load_tensors(path)
    model = build_from_metadata(metadata)
    load_weights(model, state, source=str(path))
    if data := metadata.get("data"):
        size = data["image_size"]
        model.pretrained_cfg = {"mean": tuple(data["mean"]), "std": tuple(data["std"]), "input_size": (3, size, size)}
    return model.eval()


CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")
"""The classifier heads of torchvision's and timm's models: a backbone has none, so a state_dict of
a whole model (torchvision's ``resnet50``, timm's ``vit_small``) loads without them."""


def backbone_weights(path: str | Path, backbone: nn.Module) -> None:
    """Loads into ``backbone`` the weights of ``path``: a pretraining checkpoint (``.ckpt``: its
    backbone), our export (``backbone.safetensors``, ``backbone.pth`` + ``backbone.json``), or a
    torchvision / timm state_dict (``.pth``, ``.pt``, ``.bin``, ``.safetensors``; a classifier head,
    ``fc.`` / ``head.`` / ``classifier.``, left out when the backbone has none). Strict otherwise: a
    ValueError names every missing and unexpected key and every shape that differs."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path} (model.backbone.weights)")
    if path.suffix == ".ckpt":
        state = submodule_state(read_pretraining_checkpoint(path), "backbone.")
    elif path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        state = load_tensors(path)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(CLASSIFIER_PREFIXES)}
    load_weights(backbone, state, source=str(path))


def require_finite(model: nn.Module, source: str) -> None:
    """Refuses weights or buffers holding NaN or infinity (a run that diverged): evaluating them
    would print a chance-level number as if it meant something."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{source}: {name} holds NaN or infinite values (the run diverged before this "
                "checkpoint); evaluate an earlier checkpoint"
            )


def load_encoder(path: str | Path) -> tuple[nn.Module, nn.Module | None]:
    """(backbone, projector) from a pretraining checkpoint, or (backbone, None) from an exported
    backbone (``.safetensors`` / ``.pth``); both in eval mode, loaded without unpickling, and
    refused when a weight is not finite (:func:`require_finite`)."""
    backbone, projector = _load_encoder(Path(path))
    require_finite(backbone, str(path))
    return backbone, projector


def _load_encoder(path: Path) -> tuple[nn.Module, nn.Module | None]:
    if path.suffix in (".safetensors", ".pth"):
        return load_backbone(path), None
    checkpoint = read_pretraining_checkpoint(path)
    state, metadata = backbone_state(checkpoint, path)
    backbone = build_from_metadata(metadata)
    load_weights(backbone, state, source=str(path))
    dims = checkpoint["hyper_parameters"].get("projector_dims")
    projector_state = submodule_state(checkpoint, "projector.")
    projector = None
    if dims and projector_state:
        hparams = checkpoint["hyper_parameters"]
        projector = Projector(
            backbone.feature_dim,
            dims[:-1],
            dims[-1],
            bias=hparams.get("projector_bias", False),
            batch_norm=hparams.get("projector_batch_norm", True),
        )
        load_weights(projector, projector_state, source=f"{path} (projector)")
        projector.eval()
    return backbone.eval(), projector

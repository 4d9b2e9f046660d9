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


def submodule_state(checkpoint: Mapping, prefix: str) -> dict[str, Tensor]:
    """The tensors of one submodule (``"backbone."``) of a checkpoint, without the prefix."""
    return {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def backbone_state(checkpoint: Mapping, source: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The backbone's tensors of a pretraining checkpoint and the metadata that rebuilds it
    (:func:`build_from_metadata`; what ``spectral-ssl export`` writes beside the weights)."""
    metadata = {
        "format": "spectral-ssl backbone",
        "version": 1,
        "backbone": checkpoint["hyper_parameters"]["backbone"],
        "source": str(source),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
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


def load_backbone(path: str | Path) -> nn.Module:
    """Rebuild an exported backbone from ``backbone.safetensors`` (metadata in its header) or from
    ``backbone.pth`` + the ``backbone.json`` beside it, and load its weights. Nothing is unpickled."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
            state = load_file(str(path))
        except Exception as error:  # safetensors' own error type: a damaged or foreign file
            raise ValueError(
                f"{path} is not a readable safetensors file ({error}); export it again with spectral-ssl export"
            ) from error
        if METADATA_KEY not in header:
            raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by spectral-ssl export")
        metadata = json.loads(header[METADATA_KEY])
    else:
        meta_path = path.with_name("backbone.json") if path.name == "backbone.pth" else path.with_suffix(".json")
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path} (the metadata written beside {path.name} by spectral-ssl export) is missing"
            )
        metadata, state = json.loads(meta_path.read_text()), load_tensors(path)
    model = build_from_metadata(metadata)
    load_weights(model, state, source=str(path))
    return model.eval()


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

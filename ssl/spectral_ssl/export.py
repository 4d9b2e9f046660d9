"""Export a pretrained backbone, and load it back, without unpickling anything.

``spectral-ssl export CKPT --out DIR`` writes, from a pretraining checkpoint:

- ``backbone.pth``: the backbone's state_dict alone. For ``norm="bn"`` with the ImageNet stem
  and width 64 it loads with ``strict=True`` into ``torchvision.models.resnet{18,34,50}()`` once
  that model's ``fc`` is replaced by ``nn.Identity()`` (the parameter names are torchvision's).
- ``backbone.safetensors``: the same tensors, with the metadata below in the file's header.
- ``backbone.json``: what :func:`load_backbone` needs to rebuild any variant (norm, act, width…).
- ``backbone.torchscript.pt`` (traced) and ``backbone.onnx`` (checked against PyTorch with
  onnxruntime when it is installed; skipped with a message when ``onnx`` is missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .models import BackboneConfig, NormOptions

FORMATS = ("torchvision", "safetensors", "torchscript", "onnx")
METADATA_KEY = "spectral_ssl"


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that names every mismatched key and shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: {tuple(state_dict[k].shape)} in file vs {tuple(own[k].shape)} in model"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        def first(items):
            return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

        problems = [f"{name}: {first(items)}" for name, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise ValueError(f"{source} does not fit a {type(model).__name__} built for it (another architecture, "
                         f"norm or width?) — " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _load_tensors(path: Path):
    """``torch.load(weights_only=True)`` with an error that says which file failed and why."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, other formats, pickles that are not plain tensors
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint with weights_only=True: it is truncated, "
                         f"another kind of file, or holds pickled objects beyond tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error


def _submodule_state(checkpoint: Mapping, prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def _read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = _load_tensors(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "backbone" not in checkpoint.get("hyper_parameters", {}):
        raise ValueError(f"{path} is not a spectral-ssl pretraining checkpoint (no state_dict with backbone hyperparameters)")
    return checkpoint


def read_pretraining_checkpoint(path: str | Path, checkpoint: Mapping | None = None) -> tuple[dict[str, Tensor], dict]:
    """The backbone's tensors and metadata from a Lightning checkpoint (``weights_only=True``)."""
    checkpoint = checkpoint or _read_checkpoint(path)
    state = _submodule_state(checkpoint, "backbone.")
    metadata = {"format": "spectral-ssl backbone", "version": 1, "backbone": checkpoint["hyper_parameters"]["backbone"],
                "source": str(path), "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    return state, metadata


def build_from_metadata(metadata: Mapping) -> nn.Module:
    config = dict(metadata["backbone"])
    try:
        config["norm_options"] = NormOptions(**config.get("norm_options", {}))
        return BackboneConfig(**config).build()
    except TypeError as error:
        raise ValueError(f"the backbone description {metadata['backbone']} does not match this version of "
                         f"spectral-ssl ({error})") from error


def load_backbone(path: str | Path) -> nn.Module:
    """Rebuild an exported backbone from ``backbone.safetensors`` (metadata in its header) or from
    ``backbone.pth`` + the ``backbone.json`` beside it, and load its weights. Nothing is unpickled."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not path.exists():
            raise FileNotFoundError(f"no file {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
            state = load_file(str(path))
        except Exception as error:  # safetensors' own error type: a damaged or foreign file
            raise ValueError(f"{path} is not a readable safetensors file ({error}); export it again with "
                             "spectral-ssl export") from error
        if METADATA_KEY not in header:
            raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by spectral-ssl export")
        metadata = json.loads(header[METADATA_KEY])
    else:
        meta_path = path.with_name("backbone.json") if path.name == "backbone.pth" else path.with_suffix(".json")
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} (the metadata written beside {path.name} by spectral-ssl export) is missing")
        metadata, state = json.loads(meta_path.read_text()), _load_tensors(path)
    model = build_from_metadata(metadata)
    load_weights(model, state, source=str(path))
    return model.eval()


def require_finite(model: nn.Module, source: str) -> None:
    """Refuses weights or buffers holding NaN or infinity (a run that diverged): evaluating them
    would print a chance-level number as if it meant something."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source}: {name} holds NaN or infinite values (the run diverged before this "
                             "checkpoint); evaluate an earlier checkpoint")


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
    from .models import Projector

    checkpoint = _read_checkpoint(path)
    state, metadata = read_pretraining_checkpoint(path, checkpoint)
    backbone = build_from_metadata(metadata)
    load_weights(backbone, state, source=str(path))
    dims = checkpoint["hyper_parameters"].get("projector_dims")
    projector_state = _submodule_state(checkpoint, "projector.")
    projector = None
    if dims and projector_state:
        projector = Projector(backbone.num_features, dims[:-1], dims[-1])
        load_weights(projector, projector_state, source=f"{path} (projector)")
        projector.eval()
    return backbone.eval(), projector


def export_backbone(checkpoint: str | Path, out_dir: str | Path, formats=FORMATS, image_size: int | None = None,
                    log=print) -> dict[str, Path]:
    """Writes the requested formats to ``out_dir``; returns {format: path} of those written."""
    state, metadata = read_pretraining_checkpoint(checkpoint)
    model = build_from_metadata(metadata)
    load_weights(model, state, source=str(checkpoint))
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbone.json").write_text(json.dumps(metadata, indent=2) + "\n")
    size = image_size or (32 if metadata["backbone"].get("cifar_stem") else 224)
    example = torch.randn(2, 3, size, size)
    written: dict[str, Path] = {}
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
        target = out / {"torchvision": "backbone.pth", "safetensors": "backbone.safetensors",
                        "torchscript": "backbone.torchscript.pt", "onnx": "backbone.onnx"}[fmt]
        if fmt == "torchvision":
            torch.save({k: v.contiguous() for k, v in state.items()}, target)
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(target),
                      metadata={METADATA_KEY: json.dumps(metadata)})
        elif fmt == "torchscript":
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(target))
        elif not _export_onnx(model, example, target, log):
            continue
        written[fmt] = target
        log(f"wrote {target}")
    return written


def _export_onnx(model: nn.Module, example: Tensor, target: Path, log) -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        log("skipped ONNX: the onnx and onnxscript packages are not installed (pip install onnx onnxscript onnxruntime)")
        return False
    torch.onnx.export(model, (example,), str(target), dynamo=True, external_data=False,
                      input_names=["images"], output_names=["features"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    try:
        import onnxruntime
    except ImportError:
        log("ONNX written but not checked: onnxruntime is not installed")
        return True
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": example.numpy()})[0])
    with torch.no_grad():
        expected = model(example)
    error = ((got - expected).norm() / expected.norm().clamp_min(1e-12)).item()
    if error > 1e-4:
        raise RuntimeError(f"ONNX output differs from PyTorch: relative error {error:g}")
    log(f"ONNX output matches PyTorch (onnxruntime, relative error {error:.1e})")
    return True


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="spectral-ssl export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a pretraining checkpoint, e.g. checkpoints/quickstart/checkpoints/last.ckpt")
    parser.add_argument("--out", help="output folder (default: <run folder>/export)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--image_size", type=int, help="example input size for tracing (default 32 with the CIFAR stem, else 224)")
    options = parser.parse_args(args)
    out = options.out or Path(options.checkpoint).resolve().parent.parent / "export"
    try:
        export_backbone(options.checkpoint, out, options.formats, options.image_size)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")

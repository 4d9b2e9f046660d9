"""Export a pretrained backbone in the formats other tools read (reading them back, without
unpickling anything, is :func:`spectral_ssl.checkpoints.load_backbone`).

``spectral-ssl export CKPT --out DIR`` writes, from a pretraining checkpoint:

- ``backbone.pth``: the backbone's state_dict alone. For ``norm="bn"`` with the ImageNet stem
  and width 64 it loads with ``strict=True`` into ``torchvision.models.resnet{18,34,50}()`` once
  that model's ``fc`` is replaced by ``nn.Identity()`` (the parameter names are torchvision's).
- ``backbone.safetensors``: the same tensors, with the metadata below in the file's header.
- ``backbone.json``: what ``load_backbone`` needs to rebuild any variant (norm, act, width…).
- ``backbone.torchscript.pt`` (traced) and ``backbone.onnx`` (checked against PyTorch with
  onnxruntime when it is installed; skipped with a message when ``onnx`` is missing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .checkpoints import (
    METADATA_KEY,
    backbone_state,
    build_from_metadata,
    load_backbone,
    load_weights,
    read_pretraining_checkpoint,
)
from .command import command_parser, reports_bad_input

FORMATS = ("torchvision", "safetensors", "torchscript", "onnx")

__all__ = ["FORMATS", "export_backbone", "load_backbone", "main"]  # load_backbone: read an export back


def export_backbone(
    checkpoint: str | Path, out_dir: str | Path, formats=FORMATS, image_size: int | None = None, log=print
) -> dict[str, Path]:
    """Writes the requested formats to ``out_dir``; returns {format: path} of those written."""
    state, metadata = backbone_state(read_pretraining_checkpoint(checkpoint), checkpoint)
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
        target = (
            out
            / {
                "torchvision": "backbone.pth",
                "safetensors": "backbone.safetensors",
                "torchscript": "backbone.torchscript.pt",
                "onnx": "backbone.onnx",
            }[fmt]
        )
        if fmt == "torchvision":
            torch.save({k: v.contiguous() for k, v in state.items()}, target)
        elif fmt == "safetensors":
            save_file(
                {k: v.contiguous() for k, v in state.items()},
                str(target),
                metadata={METADATA_KEY: json.dumps(metadata)},
            )
        elif fmt == "torchscript":
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(target))
        elif not _export_onnx(model, example, target, log):
            continue
        _readable_by_all(target)
        written[fmt] = target
        log(f"wrote {target}")
    return written


def _readable_by_all(path: Path) -> None:
    """The mode a plain ``open`` would give (0666 less the umask): some writers (safetensors) create
    their file with 0600, which other users of a shared model folder cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _export_onnx(model: nn.Module, example: Tensor, target: Path, log) -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        log(
            "skipped ONNX: the onnx and onnxscript packages are not installed (pip install onnx onnxscript onnxruntime)"
        )
        return False
    torch.onnx.export(
        model,
        (example,),
        str(target),
        dynamo=True,
        external_data=False,
        input_names=["images"],
        output_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
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


@reports_bad_input
def main(args: list[str]) -> dict[str, Path]:
    """``spectral-ssl export CKPT [--out DIR] [--formats [...]] [--image_size N]``."""
    parser = command_parser(
        "spectral-ssl export",
        "Write a pretraining checkpoint's backbone as a torchvision "
        "state_dict, safetensors, TorchScript and ONNX (see spectral_ssl.export).",
    )
    parser.add_argument(
        "checkpoint", type=str, help="a pretraining checkpoint, e.g. checkpoints/quickstart/checkpoints/last.ckpt"
    )
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: <run folder>/export)")
    parser.add_argument("--formats", type=str, nargs="+", default=list(FORMATS), help=f"any of {', '.join(FORMATS)}")
    parser.add_argument(
        "--image_size",
        type=int | None,
        default=None,
        help="example input size for tracing (default 32 with the CIFAR stem, else 224)",
    )
    config = parser.parse_args(args)
    out = config.out or Path(config.checkpoint).resolve().parent.parent / "export"
    return export_backbone(config.checkpoint, out, config.formats, config.image_size)

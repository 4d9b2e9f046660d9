"""``spectral-ssl export CKPT [--out DIR] [--formats ...] [--image_size N]``: a pretraining
checkpoint's backbone in the formats other tools read (see :mod:`spectral_ssl.export`)."""

from __future__ import annotations

from pathlib import Path

from ..export import FORMATS, export_backbone
from ..runs import RunFolder
from .common import command_parser, parse_with_default_classes, reports_bad_input


@reports_bad_input
def export(args: list[str]) -> dict[str, Path]:
    """Write a checkpoint's backbone as torchvision state_dict, safetensors, timm folder, torch.export, ONNX.
    Returns {format: path written}."""
    parser = command_parser(
        "spectral-ssl export",
        "Write a pretraining checkpoint's backbone as a torchvision state_dict, safetensors, a timm / Hugging "
        "Face folder, torch.export, TorchScript and ONNX, with a README.md saying what loads each (see "
        "spectral_ssl.export).",
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
        help="the image side the formats fixed to one size (ONNX) take, and the example traced and checked "
        "(default: the size the checkpoint was trained at)",
    )
    config = parse_with_default_classes(parser, args, {}, {})
    out = config.out or RunFolder.of_checkpoint(config.checkpoint).export
    return export_backbone(config.checkpoint, out, config.formats, config.image_size)

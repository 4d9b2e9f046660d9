"""Export a pretrained backbone in the formats other tools read (reading them back, without
unpickling anything, is :func:`spectral_ssl.checkpoints.load_backbone`).

``spectral-ssl export CKPT --out DIR`` writes, from a pretraining checkpoint:

- ``backbone.pth``: the backbone's state_dict alone. For ``norm="bn"`` with the ImageNet stem
  and width 64 it loads with ``strict=True`` into ``torchvision.models.resnet{18,34,50}()`` once
  that model's ``fc`` is replaced by ``nn.Identity()`` (the parameter names are torchvision's).
- ``backbone.safetensors``: the same tensors, with the metadata below in the file's header.
- ``backbone.json``: what ``load_backbone`` needs to rebuild any variant (norm, act, width…).
- ``timm/``: timm's pretrained-folder layout (``config.json`` + ``model.safetensors``), loaded by
  ``timm.create_model("local-dir:DIR/timm", pretrained=True)`` and uploadable as is to the
  Hugging Face Hub (then ``"hf-hub:<user>/<repo>"``). Written for the backbones timm has: the
  ImageNet-stem BN / SyncBN ResNets at width 64 (ReLU or GELU) and ``timm:<model>`` backbones with
  their default norm and activation; the others (PLN, LN-G, GN, LN, IterNorm, no norm, the CIFAR
  stem) have no timm architecture, and the export's ``README.md`` says what loads them.
- ``backbone.pt2`` (``torch.export``, dynamic batch and image size; ``torch.export.load(path).module()``),
  ``backbone.torchscript.pt`` (traced; TorchScript is deprecated upstream, kept for old
  consumers) and ``backbone.onnx``; each checked against the eager model's output (ONNX with
  onnxruntime when it is installed; skipped with a message when ``onnx`` is missing).
- ``README.md``: what each file is and the line that loads it.

Every file gets the mode a plain ``open`` gives (0666 less the umask), so a shared model folder
is readable by its other users.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

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
from .data.folder import IMAGENET_MEAN, IMAGENET_STD
from .models.factory import NORM_REGISTRY, default_image_size, resolved_norm_act
from .models.resnet import ARCHITECTURES
from .models.vit import VIT_PRESETS

TOLERANCE = 1e-4  # relative error allowed between a compiled format's output and eager PyTorch's

__all__ = ["FORMATS", "export_backbone", "load_backbone", "timm_equivalent"]  # load_backbone: read back


def timm_equivalent(backbone: Mapping, model: nn.Module) -> tuple[str, dict]:
    """timm's (architecture, model_args) for a backbone description (``BackboneConfig`` as a
    dict; ``model``: the backbone it built) whose state_dict timm's model loads with
    ``strict=True`` and computes the same function with; a ValueError saying why not otherwise."""
    name = backbone["name"]
    norm, act = resolved_norm_act(name, backbone.get("norm"), backbone.get("act"))
    if name.startswith("timm:"):
        if norm not in (None, "bn") or act not in (None, "relu"):
            raise ValueError(f"norm={norm!r} / act={act!r} replace layers inside timm's {name[5:]}")
        return name.removeprefix("timm:"), dict(model.timm_args)
    if name in VIT_PRESETS:
        if "VisionTransformer" not in NORM_REGISTRY[norm].timm or act != "gelu":
            raise ValueError(f"timm has no VisionTransformer with norm={norm!r} / act={act!r} (it has ln and gelu)")
        return f"{name}_patch16_224", dict(model.timm_args)
    timm_norms = [n for n, spec in NORM_REGISTRY.items() if "ResNet" in spec.timm]
    reasons = [
        f"norm={norm!r} (timm's ResNets take {' or '.join(timm_norms)})" if norm not in timm_norms else "",
        f"act={act!r} (timm's ResNets take relu or gelu here)" if act not in ("relu", "gelu") else "",
        "the CIFAR stem (3x3 conv, no max-pool)" if backbone.get("cifar_stem") else "",
        f"width={backbone.get('width', 64)} (its single-conv stem is 64 wide)"
        if backbone.get("width", 64) != 64
        else "",
    ]
    if any(reasons):
        raise ValueError("timm has no ResNet with " + " and ".join(r for r in reasons if r))
    return name, {"act_layer": "gelu"} if act == "gelu" else {}


def _write_torchvision(target: Path, *, state, **_) -> None:
    torch.save(state, target)


def _write_safetensors(target: Path, *, state, metadata, **_) -> None:
    save_file(state, str(target), metadata={METADATA_KEY: json.dumps(metadata)})


def _write_timm(target: Path, *, state, metadata, model, example, **_) -> str | None:
    """timm's pretrained folder, written by timm's own ``save_for_hf`` from timm's model of the
    architecture with these weights loaded (strict: the same names and shapes): ``config.json``
    (architecture, model_args, pretrained_cfg with the training data's preprocessing; our
    metadata under ``spectral_ssl``) and ``model.safetensors``; ``num_classes=0`` (a feature
    extractor: ``fc`` / ``head`` is ``nn.Identity``)."""
    try:
        architecture, model_args = timm_equivalent(metadata["backbone"], model)
    except ValueError as error:
        return f"{error}; load it with spectral_ssl.checkpoints.load_backbone('backbone.safetensors')"
    import timm
    from timm.models import save_for_hf

    twin = timm.create_model(architecture, pretrained=False, **{"num_classes": 0, **model_args})
    twin.load_state_dict(state)
    data = metadata.get("data") or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # checkpoints from before they said
    preprocessing = {
        "input_size": tuple(example.shape[1:]),
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
    }
    save_for_hf(
        twin,
        str(target),
        model_args=model_args,
        safe_serialization=True,
        data_config=preprocessing,
        model_config={"spectral_ssl": metadata},
    )
    for path in (target, *target.iterdir()):
        _readable_by_all(path)
    return None


def _load_timm(target: Path, example: Tensor) -> Tensor:
    import timm

    return timm.create_model(f"local-dir:{target}", pretrained=True).eval()(example)


def _write_pt2(target: Path, *, model, example, **_) -> None:
    """Batch and image size dynamic (a last feature map of 1 x 1, i.e. images of at most 32 pixels
    with the ImageNet stem or 8 with the CIFAR stem, is refused by the program's guards)."""
    dynamic = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    program = torch.export.export(model, (example,), dynamic_shapes=(dynamic,))
    torch.export.save(program, target)


def _write_torchscript(target: Path, *, model, example, **_) -> None:
    with torch.no_grad():
        torch.jit.trace(model, example).save(str(target))


def _write_onnx(target: Path, *, model, example, **_) -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "the onnx and onnxscript packages are not installed (pip install onnx onnxscript onnxruntime)"
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
    return None


def detectron2_key(name: str) -> str:
    """A torchvision ResNet key in detectron2's ResNet (the rule of MoCo's and INTL's
    ``convert-pretrain-to-detectron2.py``): the stem's ``conv1`` / ``bn1`` as ``stem.conv1`` /
    ``stem.conv1.norm``, ``layerN`` as ``res{N+1}``, ``bnK`` as ``convK.norm``, ``downsample.0`` /
    ``.1`` as ``shortcut`` / ``shortcut.norm``."""
    name = name if name.startswith("layer") else f"stem.{name}"
    for stage in (1, 2, 3, 4):
        name = name.replace(f"layer{stage}", f"res{stage + 1}")
    for conv in (1, 2, 3):
        name = name.replace(f"bn{conv}", f"conv{conv}.norm")
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _write_detectron2(target: Path, *, state, metadata, **_) -> str | None:
    """detectron2's checkpoint of a BN ResNet (``MODEL.WEIGHTS``): a pickle of ``{"model": {detectron2
    key: numpy array}, "__author__", "matching_heuristics": True}`` in its key names
    (:func:`detectron2_key`), as INTL's and MoCo's conversion scripts write it. Other backbones: why
    not (detectron2's ResNets have BatchNorm (FrozenBN / SyncBN, a config choice), ReLU, the 7 x 7 stem,
    64 channels)."""
    import pickle

    backbone = metadata["backbone"]
    norm, act = resolved_norm_act(backbone["name"], backbone.get("norm"), backbone.get("act"))
    reasons = [
        f"a {backbone['name']}" if backbone["name"] not in ARCHITECTURES else "",
        f"norm={norm!r}" if norm not in ("bn", "syncbn") else "",
        f"act={act!r}" if act != "relu" else "",
        "the CIFAR stem" if backbone.get("cifar_stem") else "",
        f"width={backbone.get('width', 64)}" if backbone.get("width", 64) != 64 else "",
    ]
    if any(reasons):
        return "detectron2's ResNets are BN ResNets with ReLU, the 7x7 stem and width 64, not " + ", ".join(
            r for r in reasons if r
        )
    model = {detectron2_key(name): tensor.numpy() for name, tensor in state.items()}
    with open(target, "wb") as f:
        pickle.dump({"model": model, "__author__": "spectral-ssl", "matching_heuristics": True}, f)
    return None


def _run_onnx(target: Path, example: Tensor) -> Tensor | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": example.numpy()})[0])


class ExportFormat(NamedTuple):
    """One export format: the file (or folder) it writes, its writer (returns None, or why it wrote
    nothing), the line of the export's README that loads it (``{folder}``: the export folder), and
    how the written file computes the example batch's features to compare with eager PyTorch (None:
    nothing to run; it returns None itself when its runtime is not installed)."""

    file: str
    write: Callable[..., str | None]
    loads_with: str
    check: Callable[[Path, Tensor], Tensor | None] | None = None


EXPORT_FORMATS = {
    "torchvision": ExportFormat(
        "backbone.pth",
        _write_torchvision,
        "`model.load_state_dict(torch.load('backbone.pth', weights_only=True))` into the matching model "
        "(torchvision's ResNet with `fc = nn.Identity()` for BN ImageNet-stem ResNets)",
    ),
    "safetensors": ExportFormat(
        "backbone.safetensors",
        _write_safetensors,
        "`spectral_ssl.checkpoints.load_backbone('backbone.safetensors')` (any variant; the architecture is "
        "in the file's header), or `safetensors.torch.load_file` for the bare tensors",
    ),
    "timm": ExportFormat(
        "timm",
        _write_timm,
        "`timm.create_model('local-dir:{folder}/timm', pretrained=True)` (a feature extractor, "
        "`num_classes=0`; pass `num_classes=N` for a fresh classifier); upload the folder to the Hugging "
        "Face Hub to load it as `hf-hub:<user>/<repo>`",
        _load_timm,
    ),
    "pt2": ExportFormat(
        "backbone.pt2",
        _write_pt2,
        "`torch.export.load('backbone.pt2').module()` (any batch and image size above the last stage's 1 x 1 map)",
        lambda target, example: torch.export.load(target).module()(example),
    ),
    "torchscript": ExportFormat(
        "backbone.torchscript.pt",
        _write_torchscript,
        "`torch.jit.load('backbone.torchscript.pt')` (a ResNet: any batch and image size; a Vision Transformer: "
        "any batch, {size} x {size} images only, as the trace fixed its number of tokens)",
        lambda target, example: torch.jit.load(str(target))(example),
    ),
    "onnx": ExportFormat(
        "backbone.onnx",
        _write_onnx,
        "`onnxruntime.InferenceSession('backbone.onnx')`, input `images`, output `features`",
        _run_onnx,
    ),
    "detectron2": ExportFormat(
        "backbone.detectron2.pkl",
        _write_detectron2,
        "detectron2: `MODEL.WEIGHTS {folder}/backbone.detectron2.pkl` with `MODEL.PIXEL_MEAN`/`PIXEL_STD` in 0-255 "
        "RGB and `INPUT.FORMAT: RGB` (its ResNet keys; docs/export.md: INTL's COCO / VOC settings)",
    ),
}
FORMATS = tuple(EXPORT_FORMATS)


def trained_image_size(backbone: Mapping) -> int:
    """The image side the checkpoint's backbone was trained at (kept in its config since the
    commands link it from the data); for older checkpoints 32 with the CIFAR stem, else 224."""
    return backbone.get("image_size") or default_image_size(backbone.get("cifar_stem", False))


def export_backbone(
    checkpoint: str | Path, out_dir: str | Path, formats=FORMATS, image_size: int | None = None, log=print
) -> dict[str, Path]:
    """Writes the requested formats (and ``README.md``) to ``out_dir``; returns {format: path}
    of those written."""
    unknown = [fmt for fmt in formats if fmt not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(map(repr, unknown))}; choose from {', '.join(FORMATS)}")
    state, metadata = backbone_state(read_pretraining_checkpoint(checkpoint), checkpoint)
    state = {k: v.contiguous() for k, v in state.items()}
    model = build_from_metadata(metadata)
    load_weights(model, state, source=str(checkpoint))
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "backbone.json", json.dumps(metadata, indent=2) + "\n")
    size = image_size or trained_image_size(metadata["backbone"])
    example = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(example)
    written, skipped = {}, {}
    for fmt in formats:
        spec = EXPORT_FORMATS[fmt]
        target = out / spec.file
        reason = spec.write(target, model=model, state=state, metadata=metadata, example=example)
        if reason:
            skipped[fmt] = reason
            log(f"skipped {fmt}: {reason}")
            continue
        with torch.no_grad():
            got = spec.check(target, example) if spec.check else None
        if got is not None:
            error = ((got.float() - expected).norm() / expected.norm().clamp_min(1e-12)).item()
            if error > TOLERANCE:
                raise RuntimeError(f"{target.name}: output differs from eager PyTorch (relative error {error:g})")
            log(f"{target.name} matches eager PyTorch (relative error {error:.1e})")
        elif spec.check:
            log(f"{target.name} written but not checked: onnxruntime is not installed")
        for path in [target, *target.rglob("*")] if target.is_dir() else [target]:
            _readable_by_all(path)
        written[fmt] = target
        log(f"wrote {target}")
    _write_text(out / "README.md", _readme(out, metadata, written, skipped, size))
    return written


def _architecture(backbone: Mapping) -> str:
    """The options that say what the exported network is, for its README."""
    norm, act = (
        value or "its own" for value in resolved_norm_act(backbone["name"], backbone.get("norm"), backbone.get("act"))
    )
    if backbone["name"] in VIT_PRESETS:
        size = {k: backbone.get(k) for k in ("patch_size", "embed_dim", "depth", "num_heads")}
        shape = ", ".join(f"{k} `{v}`" for k, v in size.items() if v) or "the preset's sizes"
        return f"norm `{norm}`, act `{act}`, {shape}, pooling `{backbone.get('pooling') or 'token'}`"
    stem = "CIFAR" if backbone.get("cifar_stem") else "ImageNet"
    return f"norm `{norm}`, act `{act}`, width `{backbone.get('width')}`, {stem} stem"


def _readme(out: Path, metadata: Mapping, written: Mapping[str, Path], skipped: Mapping[str, str], size: int) -> str:
    """The export folder's README: each file, and the line that loads it."""
    folder = out.resolve()
    backbone = metadata["backbone"]
    lines = [
        f"# Backbone exported by spectral-ssl from `{metadata['source']}`",
        "",
        f"`{backbone['name']}`, {_architecture(backbone)}; epoch "
        f"{metadata.get('epoch')}, step {metadata.get('global_step')}. Input: RGB images normalised with "
        f"the training data's mean and std, {size} x {size} pixels for the formats fixed to one size (ONNX, and "
        f"TorchScript for a Vision Transformer: {size} x {size} only; the size it was traced at, `spectral-ssl "
        "export --image_size`, by default the size the model was trained at); output: the pooled features.",
        "",
        "| file | loads with |",
        "|---|---|",
        "| `backbone.json` | the architecture, for `load_backbone('backbone.pth')` |",
        *(
            f"| `{path.name}{'/' if path.is_dir() else ''}` | "
            f"{EXPORT_FORMATS[fmt].loads_with.format(folder=folder, size=size)} |"
            for fmt, path in written.items()
        ),
    ]
    if skipped:
        lines += ["", "Not written:", "", *(f"- {fmt}: {reason}" for fmt, reason in skipped.items())]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    _readable_by_all(path)


def _readable_by_all(path: Path) -> None:
    """The mode a plain ``open`` would give (0666 less the umask; 0777 less it for a folder): some
    writers (safetensors) create their file with 0600, which other users of a shared folder cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)

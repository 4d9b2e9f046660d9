"""Export round trips: files that plain torchvision, timm, safetensors, torch.export, TorchScript and ONNX load."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from spectral_ssl.checkpoints import backbone_state, load_backbone, load_weights, read_pretraining_checkpoint
from spectral_ssl.commands import main
from spectral_ssl.export import export_backbone

ROOT = Path(__file__).resolve().parents[2]


def pretrain_checkpoint(out: Path, *overrides: str) -> Path:
    main(
        [
            "pretrain",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--output_dir",
            str(out),
            "--run_name",
            "run",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.enable_progress_bar=false",
            "--data.batch_size=32",
            "--model.projector_dims=[64,64]",
            *overrides,
        ]
    )
    return out / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def resnet50_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("r50")
    checkpoint = pretrain_checkpoint(
        out, "--model.backbone.name=resnet50", "--model.backbone.cifar_stem=false", "--model.backbone.width=64",
        "--knn.every_n_epochs=0", "--online_probe.every_n_epochs=0", "--spectrum.every_n_epochs=0",
    )  # fmt: skip
    files = export_backbone(checkpoint, out / "export", image_size=64, log=lambda *_: None)
    state, _ = backbone_state(read_pretraining_checkpoint(checkpoint), checkpoint)
    return files, state


def test_bn_resnet50_loads_into_plain_torchvision(resnet50_export):
    files, state = resnet50_export
    reference = torchvision.models.resnet50()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(torch.load(files["torchvision"], weights_only=True), strict=True)
    reference.eval()
    ours = load_backbone(files["safetensors"])
    for key, value in state.items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ours(x)
        torch.testing.assert_close(reference(x), expected)
        torch.testing.assert_close(torch.jit.load(files["torchscript"])(x), expected)
        x = torch.randn(5, 3, 64, 64)  # another batch size than the one exported
        torch.testing.assert_close(torch.export.load(files["pt2"]).module()(x), ours(x))


def test_bn_resnet50_loads_into_timm_from_its_local_folder(resnet50_export):
    import timm

    files, _ = resnet50_export
    assert sorted(p.name for p in files["timm"].iterdir()) == ["config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{files['timm']}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_backbone(files["safetensors"])(x))
    # a fresh classifier on top, as for any timm pretrained model
    classifier = timm.create_model(f"local-dir:{files['timm']}", pretrained=True, num_classes=10)
    assert classifier.fc.out_features == 10
    assert torch.equal(classifier.conv1.weight, model.conv1.weight)
    readme = (files["timm"].parent / "README.md").read_text()
    assert f"local-dir:{files['timm'].resolve()}" in readme and "backbone.pt2" in readme


def test_onnx_matches_pytorch(resnet50_export):
    onnxruntime = pytest.importorskip("onnxruntime")
    files, _ = resnet50_export
    model = load_backbone(files["torchvision"])
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)  # another batch size than the one traced
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_onnx_is_exported_at_the_size_the_model_was_trained_at(tmp_path):
    """The digits are 16 x 16: the ONNX file takes 16 x 16 images by default (it used to take the
    stem's default, 32, and refuse the data the model was trained on), and the README says so."""
    onnxruntime = pytest.importorskip("onnxruntime")
    checkpoint = pretrain_checkpoint(tmp_path, "--model.backbone.width=8")
    assert torch.load(checkpoint, weights_only=True)["hyper_parameters"]["backbone"]["image_size"] == 16
    files = export_backbone(checkpoint, tmp_path / "export", formats=["safetensors", "onnx"], log=lambda *_: None)
    assert "16 x 16 pixels" in (tmp_path / "export" / "README.md").read_text()
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        expected = load_backbone(files["safetensors"])(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize(
    "overrides, architecture",
    [
        (["--model.backbone.width=64", "--model.backbone.act=gelu", "--model.backbone.cifar_stem=false"], "resnet18"),
        (["--model.backbone.norm=lng", "--model.backbone.norm_options.lng_groups=2", "--model.backbone.width=8"], None),
        (["--model.backbone.width=8"], None),  # the CIFAR stem
    ],
    ids=["bn-gelu", "lng", "cifar-stem"],
)
def test_timm_folder_for_what_timm_has_and_a_statement_for_the_rest(tmp_path, overrides, architecture):
    import timm

    checkpoint = pretrain_checkpoint(tmp_path, *overrides)
    logged = []
    files = export_backbone(checkpoint, tmp_path / "export", formats=["safetensors", "timm"], log=logged.append)
    readme = (tmp_path / "export" / "README.md").read_text()
    if architecture is None:
        assert "timm" not in files and not (tmp_path / "export" / "timm").exists()
        assert any(line.startswith("skipped timm: timm has no ResNet with") for line in logged)
        assert "load_backbone('backbone.safetensors')" in readme.split("Not written:")[1]
        return
    config = json.loads((files["timm"] / "config.json").read_text())
    assert config["architecture"] == architecture and config["model_args"]["act_layer"] == "gelu"
    assert config["model_args"]["num_classes"] == 0 and config["spectral_ssl"]["backbone"]["act"] == "gelu"
    model = timm.create_model(f"local-dir:{files['timm']}", pretrained=True).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_backbone(files["safetensors"])(x))


def test_non_bn_variant_rebuilds_from_metadata(tmp_path):
    checkpoint = pretrain_checkpoint(
        tmp_path, "--model.backbone.norm=pln", "--model.backbone.act=pln", "--model.backbone.width=8"
    )
    main(
        ["export", str(checkpoint), "--out", str(tmp_path / "export"), "--formats", "torchvision", "safetensors", "pt2"]
    )
    metadata = json.loads((tmp_path / "export" / "backbone.json").read_text())
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "export").iterdir():  # readable by the other users of a shared folder
        assert path.name in {"backbone.pth", "backbone.safetensors", "backbone.pt2", "backbone.json", "README.md"}
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert metadata["backbone"]["norm"] == "pln" and metadata["backbone"]["act"] == "pln"
    a, b = (
        load_backbone(tmp_path / "export" / "backbone.pth"),
        load_backbone(tmp_path / "export" / "backbone.safetensors"),
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        torch.testing.assert_close(torch.export.load(tmp_path / "export" / "backbone.pt2").module()(x), b(x))


def test_mismatched_architecture_and_bad_files_are_named(resnet50_export, tmp_path):
    files, state = resnet50_export
    resnet18 = torchvision.models.resnet18()
    resnet18.fc = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"unexpected keys: .*layer1\.0\.conv3\.weight.*shape mismatches"):
        load_weights(resnet18, state, source="backbone.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_pretraining_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a spectral-ssl pretraining checkpoint"):
        read_pretraining_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["export", str(tmp_path / "missing.ckpt")])
    (tmp_path / "corrupt.ckpt").write_bytes(torch.randint(0, 256, (1000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(SystemExit, match="cannot be read as a PyTorch checkpoint"):
        main(["export", str(tmp_path / "corrupt.ckpt")])


def test_timm_backbone_exports_to_plain_timm(tmp_path):
    import timm

    checkpoint = pretrain_checkpoint(tmp_path, "--model.backbone.name=timm:resnet18")
    files = export_backbone(
        checkpoint, tmp_path / "export", formats=["torchvision", "timm"], image_size=32, log=lambda *_: None
    )
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(torch.load(files["torchvision"], weights_only=True), strict=True)
    from_folder = timm.create_model(f"local-dir:{files['timm']}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = load_backbone(files["torchvision"])(x)
        torch.testing.assert_close(reference(x), expected)
        torch.testing.assert_close(from_folder(x), expected)


VIT = ["--model.backbone.name=vit_tiny", "--model.backbone.depth=2", "--model.backbone.embed_dim=48"]


def test_a_layernorm_vit_exports_to_timm_and_every_format_with_equal_outputs(tmp_path):
    """A ViT with timm's own norm and activation: its timm folder loads with
    ``timm.create_model("local-dir:...")`` and computes what ours does, at the training size (the
    digits' 16 px, patch 2) and, as the other formats, at another batch size."""
    import timm

    checkpoint = pretrain_checkpoint(tmp_path, *VIT)
    files = export_backbone(checkpoint, tmp_path / "export", log=lambda *_: None)
    assert {"timm", "pt2", "torchscript", "safetensors"} <= set(files)
    ours = load_backbone(files["safetensors"])
    reference = timm.create_model(f"local-dir:{files['timm']}", pretrained=True).eval()
    assert type(reference).__name__ == "VisionTransformer" and reference.patch_embed.patch_size == (2, 2)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = ours(x)
        torch.testing.assert_close(reference(x), expected)
        torch.testing.assert_close(torch.export.load(files["pt2"]).module()(x), expected)
        torch.testing.assert_close(torch.jit.load(files["torchscript"])(x), expected)
        with pytest.raises(RuntimeError):  # the trace fixed the number of tokens: another size does not run
            torch.jit.load(files["torchscript"])(torch.randn(5, 3, 32, 32))
        assert torch.export.load(files["pt2"]).module()(torch.randn(5, 3, 32, 32)).shape == (5, 48)  # pt2 does
    readme = (tmp_path / "export" / "README.md").read_text()
    assert "`vit_tiny`, norm `ln`, act `gelu`, embed_dim `48`, depth `2`, pooling `token`" in readme
    assert "a Vision Transformer: any batch, 16 x 16 images only" in readme  # the TorchScript row says so


def test_a_pln_vit_exports_and_loads_back_equal(tmp_path):
    """PLN as the norm and as the MLPs' activation: no timm architecture has it (the folder is
    skipped, saying why); load_backbone rebuilds it from the safetensors header, equal outputs."""
    checkpoint = pretrain_checkpoint(tmp_path, *VIT, "--model.backbone.norm=pln", "--model.backbone.act=pln")
    logged = []
    files = export_backbone(checkpoint, tmp_path / "export", formats=["safetensors", "timm"], log=logged.append)
    assert "timm" not in files and any("timm has no VisionTransformer with norm='pln'" in line for line in logged)
    state, _ = backbone_state(read_pretraining_checkpoint(checkpoint), checkpoint)
    loaded = load_backbone(files["safetensors"])
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value)
    model = torch.load(checkpoint, weights_only=True)
    assert model["hyper_parameters"]["backbone"]["act"] == "pln"
    assert isinstance(loaded.blocks[0].mlp.act, torch.nn.Module) and type(loaded.blocks[0].mlp.act).__name__ == (
        "ParallelLayerNorm"
    )


def detectron2_resnet50_names() -> set[str]:
    """detectron2's ResNet-50 weight names, written out from its structure (``BasicStem`` then the
    stages res2-res5 of 3, 4, 6, 3 ``BottleneckBlock``s, each ``conv1``-``conv3`` with a ``.norm``,
    the first of each stage with a ``shortcut`` and its ``.norm``), BatchNorm's five tensors each."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"stem.conv1.weight", *(f"stem.conv1.norm.{n}" for n in norm)}
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for block in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if block == 0 else [])
            for conv in convs:
                names |= {f"res{stage}.{block}.{conv}.weight", *(f"res{stage}.{block}.{conv}.norm.{n}" for n in norm)}
    return names


def test_a_bn_resnet50_exports_detectron2s_weights(resnet50_export, tmp_path):
    """``backbone.detectron2.pkl``: detectron2's key set, each tensor equal to the torchvision export's
    under the conversion rule; other backbones are refused with the reason."""
    import pickle

    from spectral_ssl.export import detectron2_key

    files, _ = resnet50_export
    with open(files["detectron2"], "rb") as f:  # our own file, written just now
        written = pickle.load(f)
    assert written["matching_heuristics"] is True and set(written["model"]) == detectron2_resnet50_names()
    torchvision_state = torch.load(files["torchvision"], weights_only=True)
    for name, tensor in torchvision_state.items():
        assert np.array_equal(written["model"][detectron2_key(name)], tensor.numpy()), name
    logged = []
    checkpoint = pretrain_checkpoint(tmp_path, "--model.backbone.norm=gn")
    assert "detectron2" not in export_backbone(checkpoint, tmp_path / "gn", formats=["detectron2"], log=logged.append)
    assert any("detectron2's ResNets are BN ResNets" in line and "norm='gn'" in line for line in logged)

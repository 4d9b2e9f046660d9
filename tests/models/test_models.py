"""Backbones against torchvision's own models."""

import pytest
import torch
import torchvision

from spectral_ssl.models import Projector, create_backbone


@pytest.mark.parametrize("name, params_with_fc", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_bn_resnet_is_torchvision_key_for_key(name, params_with_fc):
    ours = create_backbone(name).eval()
    reference = getattr(torchvision.models, name)().eval()
    fc = reference.fc.weight.numel() + reference.fc.bias.numel()
    assert sum(p.numel() for p in ours.parameters()) + fc == params_with_fc
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    assert ours.num_features == reference.inplanes


def test_cifar_stem_width_and_zero_init():
    model = create_backbone("resnet18", cifar_stem=True, width=16, zero_init_residual=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.num_features == 128
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 128)
    assert all(block.bn2.weight.abs().sum() == 0 for block in model.layer1)


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        create_backbone("resnet7")
    with pytest.raises(ValueError, match="unknown norm 'xx'"):
        create_backbone("resnet18", norm="xx")


def test_projector_layout():
    head = Projector(512, [2048, 2048], 128)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].bias is None and head[-1].bias is not None
    assert head(torch.randn(4, 512)).shape == (4, 128)
    solo_simclr = Projector(512, [2048], 128, bias=True, batch_norm=False)  # solo-learn's SimCLR head
    assert [type(m).__name__ for m in solo_simclr] == ["Linear", "ReLU", "Linear"] and solo_simclr[0].bias is not None


def test_a_checkpoint_with_another_head_layout_loads_its_projector(tmp_path, tiny):
    """load_encoder rebuilds the projector in the layout the run was trained with (solo-learn's
    heads: a bias, SimCLR's without BatchNorm), strictly."""
    from spectral_ssl.checkpoints import load_encoder
    from spectral_ssl.commands import main

    cli = main(["pretrain", *tiny, "--model=spectral_ssl.methods.SimCLR", "--model.projector_bias=true",
                "--model.projector_batch_norm=false", "--trainer.max_steps=1", "--knn.every_n_epochs=0",
                "--spectrum.every_n_epochs=0", "--output_dir", str(tmp_path)])  # fmt: skip
    _, projector = load_encoder(tmp_path / "quickstart" / "checkpoints" / "last.ckpt")
    assert [type(m).__name__ for m in projector] == ["Linear", "ReLU", "Linear"]
    for key, value in projector.state_dict().items():
        assert torch.equal(value, cli.model.projector.state_dict()[key])


TIMM_FAMILIES = {
    "resnet18": 224,  # a conv net
    "mobilenetv3_small_100": 224,  # a head with a pre-logits stage: num_features 576, forward 1024
    "efficientnet_b0": 224,
    "convnext_atto": 224,
    "vit_tiny_patch16_224": 224,  # a transformer: its token width
}


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_the_feature_width_is_measured_from_what_forward_returns(name):
    """The width that sizes the projector, the probe and the linear classifier is what the model
    returns, not timm's num_features metadata."""
    import timm

    model = create_backbone(f"timm:{name}")
    reference = timm.create_model(name, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        width = reference(torch.randn(2, 3, TIMM_FAMILIES[name], TIMM_FAMILIES[name])).shape[1]
    assert model.feature_dim == width and model.training  # measured in eval mode, given back in train mode
    if name == "mobilenetv3_small_100":
        assert (model.num_features, model.feature_dim) == (576, 1024)


def test_a_timm_model_whose_num_features_is_not_its_width_pretrains_and_sizes_every_head(tmp_path):
    from spectral_ssl.commands import main
    from spectral_ssl.evaluation import LinearClassifier

    cli = main(
        [
            "pretrain",
            "--config=quickstart",
            "--model.backbone.name=timm:mobilenetv3_small_100",
            "--model.projector_dims=[64,64]",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--knn.every_n_epochs=0",
            "--spectrum.every_n_epochs=0",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert cli.model.projector[0].in_features == 1024
    probe = next(c for c in cli.trainer.callbacks if type(c).__name__ == "OnlineLinearProbe")
    assert probe.classifier.in_features == 1024
    classifier = LinearClassifier(str(tmp_path / "quickstart" / "checkpoints" / "last.ckpt"), num_classes=10)
    assert classifier.classifier.in_features == 1024


def test_a_timm_vit_gets_the_data_image_size_and_its_norms_on_the_feature_axis():
    """timm:vit_tiny_patch16_224 on 32 px images (CIFAR): built for 32 px (4 patches of 16), and a
    norm choice lands channels-last, normalizing each token's features; attention goes through
    torch's scaled_dot_product_attention."""
    from spectral_ssl.models.norms import ParallelLayerNorm

    model = create_backbone("timm:vit_tiny_patch16_224", image_size=32, norm="pln")
    assert model.patch_embed.img_size == (32, 32) and model.feature_dim == 192
    plns = [m for m in model.modules() if isinstance(m, ParallelLayerNorm)]
    assert len(plns) == 2 * 12 + 1 and all(m.channels_last for m in plns)
    assert all(block.attn.fused_attn for block in model.blocks)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_a_norm_choice_on_a_timm_family_of_unknown_layout_is_refused_at_build():
    with pytest.raises(ValueError, match=r"timm:convnext_atto is a ConvNeXt, whose norm layout is not known .* ResNet"):
        create_backbone("timm:convnext_atto", norm="pln")


@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224", "vit_tiny", "resnet18", "timm:resnet18"])
def test_every_size_the_run_feeds_is_built_for_and_checked_at_build(name):
    """A multi-crop recipe of 32, 32, 16, 16 px on 32 px data: timm's ViT was built for 32 px only and
    failed in the first step (``Input height (16) doesn't match model (32)``). Now every backbone
    is built to take each view size (timm's ViTs with dynamic_img_size) and checked on each."""
    model = create_backbone(name, image_size=32, view_sizes=(32, 16), cifar_stem=True)
    with torch.no_grad():
        for size in (32, 16):
            assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, model.feature_dim)
    if name.startswith("timm:vit"):
        assert model.timm_args == {"img_size": 32, "dynamic_img_size": True}  # the export builds the same


@pytest.mark.parametrize(
    "name, options, size",
    [
        ("vit_tiny", dict(patch_size=8), 12),  # 12 px in patches of 8
        ("timm:vit_tiny_patch16_224", {}, 24),  # 24 px in patches of 16
    ],
)
def test_a_view_size_the_backbone_cannot_take_is_refused_at_build_naming_it(name, options, size):
    with pytest.raises(
        ValueError, match=rf"backbone {name} cannot take {size}x{size} images \(a view size .*32, {size} px"
    ):
        create_backbone(name, image_size=32, view_sizes=(32, size), **options)


def test_pretraining_starts_from_given_weights_and_resumes_without_them(tmp_path, tiny):
    """``--model.backbone.weights``: an export, a .ckpt, or torchvision's state_dict of a whole
    model (its fc left out) start the run (lr 0: the weights stay as loaded); wrong keys are named;
    a resumed run takes its checkpoint, even with the weights file gone."""
    import torchvision

    from spectral_ssl.commands import main
    from spectral_ssl.export import export_backbone

    quiet = ["--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0", "--online_probe.every_n_epochs=0"]
    first = main(["pretrain", *tiny, *quiet, "--trainer.max_steps=2", "--output_dir", str(tmp_path), "--run_name", "a"])
    checkpoint = tmp_path / "a" / "checkpoints" / "last.ckpt"
    files = export_backbone(
        checkpoint, tmp_path / "export", formats=["safetensors", "torchvision"], log=lambda *_: None
    )
    for source in (files["safetensors"], files["torchvision"], checkpoint):
        run = main(["pretrain", *tiny, *quiet, "--trainer.max_steps=1", "--model.optimizer.lr=0",
                    "--output_dir", str(tmp_path), "--run_name", f"from-{source.name}",
                    f"--model.backbone.weights={source}"])  # fmt: skip
        for (name, got), expected in zip(run.model.backbone.named_parameters(), first.model.backbone.parameters()):
            assert torch.equal(got, expected), (source.name, name)
    resnet = torchvision.models.resnet18()  # the ImageNet stem, width 64: a whole model with its classifier
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    weights = f"--model.backbone.weights={tmp_path / 'resnet18.pth'}"
    run = main(["pretrain", *tiny, *quiet, "--trainer.max_steps=1", "--model.optimizer.lr=0",
                "--model.backbone.width=64", "--model.backbone.cifar_stem=false", weights,
                "--output_dir", str(tmp_path), "--run_name", "torchvision"])  # fmt: skip
    assert torch.equal(run.model.backbone.conv1.weight, resnet.conv1.weight)
    with pytest.raises(SystemExit, match=r"error: .*resnet18.pth.*(missing|unexpected|shape)"):
        main(["pretrain", *tiny, *quiet, "--trainer.max_steps=1", weights, "--output_dir", str(tmp_path),
              "--run_name", "wrong"])  # fmt: skip
    (tmp_path / "damaged.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit, match=r"error: .*damaged.safetensors is not a readable safetensors file"):
        main(["pretrain", *tiny, *quiet, "--trainer.max_steps=1", "--output_dir", str(tmp_path), "--run_name",
              "damaged", f"--model.backbone.weights={tmp_path / 'damaged.safetensors'}"])  # fmt: skip
    (tmp_path / "export" / "backbone.safetensors").unlink()
    resumed = main(["pretrain", *tiny, *quiet, "--trainer.max_steps=2", "--model.optimizer.lr=0", "--output_dir",
                    str(tmp_path), "--run_name", "from-backbone.safetensors",
                    f"--model.backbone.weights={files['safetensors']}"])  # fmt: skip
    assert resumed.trainer.global_step == 2

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

"""Each normalization layer against its formula written independently, and every (norm, act) pair."""

import pytest
import torch
import torch.nn.functional as F

from spectral_ssl.models import ACTS, NORMS, create_backbone
from spectral_ssl.models.norms import GroupedLayerNorm, IterNorm2d, LayerNorm2d, ParallelLayerNorm


def per_position_groups(x, group_size):
    """(N, C, H, W) -> (N*H*W, C/k, k): the channel blocks at every position."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c // group_size, group_size)


def test_pln_normalizes_each_block_at_each_position():
    x = 3 * torch.randn(2, 24, 5, 5, dtype=torch.float64) + 1
    out = ParallelLayerNorm(24, group_size=8).double()(x)
    blocks = per_position_groups(out, 8)
    torch.testing.assert_close(blocks.mean(-1), torch.zeros(blocks.shape[:2], dtype=torch.float64), atol=1e-12, rtol=0)
    expected_var = 1 / (1 + 1e-5 / per_position_groups(x, 8).var(-1, unbiased=False))  # eps shrinks it slightly
    torch.testing.assert_close(blocks.var(-1, unbiased=False), expected_var)


def test_pls_and_affine():
    x = torch.randn(3, 12, 4, 4, dtype=torch.float64)
    layer = ParallelLayerNorm(12, group_size=4, centre=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.arange(12.0))
        layer.bias.fill_(0.5)
    blocks = per_position_groups(x, 4)
    rms = blocks / torch.sqrt(blocks.square().mean(-1, keepdim=True) + 1e-5)
    expected = rms.reshape(3, 4, 4, 12).permute(0, 3, 1, 2) * torch.arange(12.0).view(1, -1, 1, 1) + 0.5
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.shape == (12,)  # (C,) so that a p.ndim <= 1 no-decay filter sees it


def test_pln_rank_cap_and_bad_group_sizes():
    x = torch.randn(4000, 32, 1, 1, dtype=torch.float64)
    for k, rank in ((4, 24), (8, 28), (32, 31)):
        feats = ParallelLayerNorm(32, group_size=k).double()(x).flatten(1)
        assert torch.linalg.matrix_rank(torch.cov(feats.T)).item() == rank
    with pytest.raises(ValueError, match=">= 3"):
        ParallelLayerNorm(32, group_size=2)
    with pytest.raises(ValueError, match="divide"):
        ParallelLayerNorm(30, group_size=8)


def test_layernorm2d_is_pln_with_k_equal_c_and_lng_with_one_group():
    x = torch.randn(2, 16, 3, 3)
    ln = LayerNorm2d(16, eps=1e-5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (16,), eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected)
    torch.testing.assert_close(ParallelLayerNorm(16, group_size=16)(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(GroupedLayerNorm(16, num_groups=1)(x), expected, atol=1e-6, rtol=1e-5)


def test_lng_groups_and_explicit_spatial_pooling_is_groupnorm():
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    out = GroupedLayerNorm(16, num_groups=4).double()(x)
    blocks = per_position_groups(out, 4)
    torch.testing.assert_close(blocks.mean(-1), torch.zeros(blocks.shape[:2], dtype=torch.float64), atol=1e-12, rtol=0)
    pooled = GroupedLayerNorm(16, num_groups=4, pool_spatial=True).double()
    torch.testing.assert_close(pooled(x), torch.nn.GroupNorm(4, 16).double()(x))


def test_iternorm_whitens_groups_in_training_and_uses_running_statistics_in_eval():
    torch.manual_seed(0)
    mix = torch.eye(8) + 0.15 * torch.randn(8, 8)  # well conditioned: NS converges in a few steps
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 8, 6, 6)).repeat(1, 2, 1, 1) + 3.0
    x[:, 8:] = torch.randn(64, 8, 6, 6) * 2  # the second group is independent of the first
    layer = IterNorm2d(16, group_size=8, iters=8, eps=1e-5, momentum=1.0)
    out = layer(x)
    for g in range(2):
        feats = out[:, 8 * g : 8 * g + 8].transpose(0, 1).reshape(8, -1)
        cov = torch.cov(feats, correction=0)
        torch.testing.assert_close(cov, torch.eye(8), atol=5e-3, rtol=0)
    # momentum 1: running statistics are exactly this batch's, so eval reproduces training output
    layer.eval()
    torch.testing.assert_close(layer(x), out, atol=1e-4, rtol=1e-4)
    # and eval does not depend on the other images in the batch
    torch.testing.assert_close(layer(x[:3]), out[:3], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", ACTS)
def test_every_norm_and_act_pair_trains(norm, act):
    if act == "pln" and norm != "pln":
        with pytest.raises(ValueError, match="norm='pln'"):
            create_backbone("resnet18", norm=norm, act=act)
        return
    model = create_backbone("resnet18", norm=norm, act=act, cifar_stem=True, width=16)
    out = model(torch.randn(4, 3, 16, 16))
    out.square().mean().backward()
    assert out.shape == (4, 128) and torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if norm == "none":  # SkipInit gains start at zero and receive gradients
        assert model.layer1[0].skip_gain.item() == 0 and model.layer1[0].skip_gain.grad is not None


def test_pln_as_activation_has_no_other_nonlinearity():
    model = create_backbone("resnet18", norm="pln", act="pln", cifar_stem=True, width=16)
    block = model.layer1[0]
    assert isinstance(block.bn1, ParallelLayerNorm) and isinstance(block.act1, torch.nn.Identity)
    assert isinstance(block.act2, ParallelLayerNorm)  # after the residual addition
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in model.modules())
    # the residual stream is all PLN outputs, whose groups sum to zero: rank capped at C (1 - 1/k)
    features = model.eval()(torch.randn(400, 3, 16, 16)).double()
    assert torch.linalg.matrix_rank(torch.cov(features.T)).item() == model.num_features * 7 // 8


def test_timm_backbone_with_norm_swap():
    model = create_backbone("timm:resnet18", norm="pln")
    assert isinstance(model.layer1[0].bn1, ParallelLayerNorm) and model.num_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_lng_groups_of_two_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        GroupedLayerNorm(16, num_groups=8)

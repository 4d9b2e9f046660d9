"""Each normalization layer against its formula written independently, and every (norm, act) pair."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spectral_ssl.models import ACTS, NORMS, NormOptions, create_backbone, norm_layer
from spectral_ssl.models.norms import (
    ChannelsLast,
    GroupedLayerNorm,
    IterNorm2d,
    LayerNorm2d,
    ParallelLayerNorm,
    is_norm,
)


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
    with pytest.raises(ValueError, match="PLN group_size must be >= 2"):
        ParallelLayerNorm(32, group_size=1)
    with pytest.raises(
        ValueError, match=r"do not divide 30 channels \(group sizes that do: 1, 2, 3, 5, 6, 10, 15, 30\)"
    ):
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


def test_lng_groups_of_one_are_refused_naming_the_counts_that_fit():
    GroupedLayerNorm(16, num_groups=8)  # groups of 2: a smooth sign, as PLN-2
    with pytest.raises(ValueError, match="at least 2 .* num_groups may be 1, 2, 4, 8"):
        GroupedLayerNorm(16, num_groups=16)


OPTIONS = NormOptions(gn_groups=4, pln_group_size=4, lng_groups=2, iternorm_group_size=4)


def reference(norm: str, x: np.ndarray) -> np.ndarray:
    """Each norm in float64 numpy, written from its definition, on (B, P, D): D features at each
    of P positions (tokens, or pixels), in training mode, affine at its initial identity."""
    b, positions, d = x.shape

    def blockwise(values, k, centre, eps):
        blocks = values.reshape(b, positions, d // k, k)
        if centre:
            blocks = blocks - blocks.mean(-1, keepdims=True)
        return (blocks / np.sqrt((blocks**2).mean(-1, keepdims=True) + eps)).reshape(b, positions, d)

    if norm in ("bn", "syncbn"):
        return (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5)
    if norm == "gn":  # 4 groups of 2 features, statistics over the group and every position, per image
        groups = x.reshape(b, positions, 4, d // 4)
        mean, var = groups.mean((1, 3), keepdims=True), groups.var((1, 3), keepdims=True)
        return ((groups - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    if norm == "ln":
        return blockwise(x, d, True, 1e-6)
    if norm == "rms":
        return blockwise(x, d, False, 1e-6)
    if norm in ("pln", "pls"):
        return blockwise(x, 4, norm == "pln", 1e-5)
    if norm == "lng":
        return blockwise(x, d // 2, True, 1e-5)
    if norm == "iternorm":  # Huang et al. 2019, Alg. 1, per group of 4 features over all B x P rows
        out = np.empty_like(x)
        for g in range(d // 4):
            rows = x[..., 4 * g : 4 * g + 4].reshape(-1, 4).T  # (4, m)
            centred = rows - rows.mean(1, keepdims=True)
            sigma = 1e-5 * np.eye(4) + centred @ centred.T / rows.shape[1]
            trace = np.trace(sigma)
            normalized, p = sigma / trace, np.eye(4)
            for _ in range(5):
                p = 1.5 * p - 0.5 * np.linalg.matrix_power(p, 3) @ normalized
            out[..., 4 * g : 4 * g + 4] = ((p / np.sqrt(trace)) @ centred).T.reshape(b, positions, 4)
        return out
    assert norm == "none"
    return x


def features(b, n, d, seed=0):
    """(B, N, D) values whose statistics differ between the token and the feature axes."""
    generator = np.random.default_rng(seed)
    return generator.normal(size=(b, n, d)) * generator.uniform(0.5, 3, size=d) + generator.normal(size=(1, n, 1)) * 2


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_normalizes_the_feature_axis_of_tokens_even_when_n_equals_d(norm):
    """(B, N, D) tokens with N == D (where normalizing the wrong axis fits every shape): the
    channels-last layer equals the float64 reference over D."""
    x = features(4, 8, 8)
    layer = norm_layer(norm, OPTIONS, channels_last=True)(8).double().train()
    got = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, reference(norm, x), rtol=1e-6 if norm == "iternorm" else 1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_normalizes_the_channels_of_a_map(norm):
    """(B, C, H, W) maps: the channels-first layer equals the same reference over C, the positions
    being the H x W pixels; and both layouts agree on vectors ((B, C, 1, 1) and (B, C))."""
    x = features(3, 6 * 5, 8, seed=1)  # (B, P = H W, C)
    maps = torch.from_numpy(x).reshape(3, 6, 5, 8).permute(0, 3, 1, 2)  # (B, C, H, W)
    layer = norm_layer(norm, OPTIONS)(8).double().train()
    got = layer(maps).permute(0, 2, 3, 1).reshape(3, 30, 8).detach().numpy()
    np.testing.assert_allclose(got, reference(norm, x), rtol=1e-6 if norm == "iternorm" else 1e-9, atol=1e-9)
    vectors = torch.from_numpy(features(16, 1, 8, seed=2)[:, 0])
    first, last = (norm_layer(norm, OPTIONS, channels_last=c)(8).double().train() for c in (False, True))
    torch.testing.assert_close(first(vectors[..., None, None])[..., 0, 0], last(vectors))


def test_pln_of_two_is_a_smooth_sign_and_pls_of_one_too():
    """k = 2: a block (a, b) becomes +-d / sqrt(d^2 + eps), d = (a - b) / 2; PLS with k = 1:
    x / sqrt(x^2 + eps). eps sets the sharpness (the PLN paper's construction)."""
    x = torch.tensor([[0.0, 0.001, 1.0, -1.0, 0.003, 0.0]], dtype=torch.float64)
    d = (x[0, 0::2] - x[0, 1::2]) / 2
    expected = torch.stack([d, -d], 1).flatten() / torch.sqrt(d.square().repeat_interleave(2) + 1e-5)
    torch.testing.assert_close(ParallelLayerNorm(6, group_size=2).double()(x)[0], expected)
    pls = ParallelLayerNorm(6, group_size=1, centre=False).double()(x)[0]
    torch.testing.assert_close(pls, x[0] / torch.sqrt(x[0].square() + 1e-5))
    with pytest.raises(ValueError, match="PLS group_size must be >= 1"):
        ParallelLayerNorm(6, group_size=0, centre=False)


def test_iternorm_group_size_follows_the_reference_rule():
    assert IterNorm2d(96, group_size=64).group_size == 32  # halved until it divides
    assert IterNorm2d(40, group_size=64).group_size == 40  # capped at C
    assert IterNorm2d(24, group_size=16).group_size == 8


@pytest.mark.parametrize("norm", ["ln", "rms", "pln", "pls", "lng", "bn", "iternorm"])
def test_a_vit_with_each_norm_normalizes_its_tokens(norm):
    """Every norm of a ViT built with ``norm`` is the channels-last layer (the one that
    normalizes each token's D features), and the model runs forward and backward."""
    model = create_backbone("vit_tiny", image_size=16, depth=2, embed_dim=64, num_heads=4, norm=norm)
    wrapped = [m.norm for m in model.modules() if isinstance(m, ChannelsLast)]  # torch's BN, handed D as channels
    norms = [m for m in model.modules() if is_norm(m) and all(m is not w for w in wrapped)]
    assert norms or wrapped
    assert all(getattr(m, "channels_last", isinstance(m, torch.nn.LayerNorm)) for m in norms)
    out = model(torch.randn(3, 3, 16, 16))
    out.square().mean().backward()
    assert out.shape == (3, 64) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pln_as_the_vit_mlp_activation():
    model = create_backbone("vit_small", image_size=32, depth=1, act="pln")
    mlp = model.blocks[0].mlp
    assert isinstance(mlp.act, ParallelLayerNorm) and mlp.act.channels_last and mlp.act.num_channels == 4 * 384
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_trains_and_evaluates_in_half_precision_with_its_buffers_converted(norm, channels_last, dtype):
    """``precision=bf16-true`` and ``.half()`` convert every parameter and buffer: IterNorm's update of
    its running statistics assumed float32 buffers (``lerp_`` of a float32 value into a bf16 one
    raised in the first step). Training (buffers updated, backward) and eval, in the input's dtype."""
    layer = norm_layer(norm, channels_last=channels_last)(64).to(dtype)
    x = (torch.randn(4, 7, 64) if channels_last else torch.randn(4, 64, 5, 5)).to(dtype).requires_grad_()
    before = {name: b.clone() for name, b in layer.named_buffers()}
    out = layer.train()(x)
    out.float().square().mean().backward()
    evaluated = layer.eval()(x.detach())
    assert out.dtype == evaluated.dtype == dtype
    assert torch.isfinite(out.float()).all() and torch.isfinite(evaluated.float()).all()
    assert torch.isfinite(x.grad.float()).all()
    for name, buffer in layer.named_buffers():
        assert buffer.dtype == before[name].dtype, name  # updated in place, in its own dtype
        if buffer.is_floating_point():
            assert not torch.equal(buffer, before[name]), f"{name} was not updated"


def test_a_new_norm_is_one_registry_entry(monkeypatch):
    """InstanceNorm added as one entry of NORM_REGISTRY: the factory builds it in both layouts,
    trainable=norm_only trains it (is_norm), and the export knows timm has none."""
    import torch.nn as nn

    from spectral_ssl.export import timm_equivalent
    from spectral_ssl.models import factory
    from spectral_ssl.models.norms import ChannelsLast
    from spectral_ssl.models.trainable import set_trainable

    entry = factory.NormSpec(
        lambda c, o, last: (
            ChannelsLast(nn.InstanceNorm1d(c, affine=True)) if last else nn.InstanceNorm2d(c, affine=True)
        ),
        (nn.modules.instancenorm._InstanceNorm,),
    )
    monkeypatch.setitem(factory.NORM_REGISTRY, "in", entry)
    model = create_backbone("resnet18", norm="in", cifar_stem=True, width=8)
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) == 20
    vit = create_backbone("vit_tiny", norm="in", image_size=16, depth=1)
    assert isinstance(vit.blocks[0].norm1, ChannelsLast)
    trainable, _ = set_trainable(model, [], "norm_only")
    assert trainable == sum(
        p.numel() for m in model.modules() if isinstance(m, nn.InstanceNorm2d) for p in m.parameters()
    )
    with pytest.raises(ValueError, match="timm's ResNets take bn or syncbn"):
        timm_equivalent({"name": "resnet18", "norm": "in"}, model)

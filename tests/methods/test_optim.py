"""Optimizer groups and the warm-up + cosine schedule against their formulas."""

import math

import pytest
import torch
from torch import nn

from spectral_ssl.models import NORMS, create_backbone
from spectral_ssl.optim import OptimizerConfig, WarmupCosine, build_optimizer, parameter_groups


def test_bias_and_norm_parameters_are_spared_by_their_shape():
    model = nn.Sequential(create_backbone("resnet18", cifar_stem=True, width=8), nn.Linear(64, 10))
    decay, no_decay = parameter_groups(model, 1e-4, exclude_bias_and_norm=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in no_decay["params"]} == {id(p) for m in norms for p in m.parameters()} | {id(model[1].bias)}
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert (decay["name"], no_decay["name"]) == ("decay", "no_decay")
    (everything,) = parameter_groups(model, 1e-4, exclude_bias_and_norm=False)
    assert len(everything["params"]) == len(list(model.parameters()))


def spared_by_the_shape_rule(model: nn.Module) -> set[int]:
    """What DINO's rule spares, written out: every parameter of at most one dimension, and those a
    module names in timm's no_weight_decay() (e.g. a ViT's pos_embed, cls_token)."""
    listed = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            listed |= {f"{prefix}.{n}".lstrip(".") for n in module.no_weight_decay()}
    return {id(p) for name, p in model.named_parameters() if p.ndim <= 1 or name in listed}


BACKBONES = {
    **{f"resnet {norm}": dict(name="resnet18", norm=norm, cifar_stem=True, width=8) for norm in NORMS},
    "resnet pln as act": dict(name="resnet18", norm="pln", act="pln", cifar_stem=True, width=16),
    **{f"vit {norm}": dict(name="vit_tiny", norm=norm, image_size=16, depth=1) for norm in ("ln", "pln", "rms")},
    "timm deit3 (LayerScale)": dict(name="timm:deit3_small_patch16_224", image_size=32),
    "timm resnet": dict(name="timm:resnet18", image_size=32),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_no_decay_is_chosen_by_shape_for_every_backbone(backbone):
    """timm's deit3 put its 24 LayerScale gains (blocks.*.ls1/ls2.gamma, 1-D) in the decayed group:
    the groups were chosen from module types and names. Now every 1-D parameter (norm affines,
    LayerScale and SkipInit gains, biases) and timm's listed ones are spared, nothing else."""
    model = create_backbone(**BACKBONES[backbone])
    decay, no_decay = parameter_groups(model, 1e-4, exclude_bias_and_norm=True)
    assert {id(p) for p in no_decay["params"]} == spared_by_the_shape_rule(model)
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters()} - spared_by_the_shape_rule(model)
    if "deit3" in backbone:
        gains = [p for name, p in model.named_parameters() if name.endswith(("ls1.gamma", "ls2.gamma"))]
        assert len(gains) == 24 and {id(p) for p in gains} <= {id(p) for p in no_decay["params"]}


def lars_step_written_out(parameter, gradient, lr, weight_decay, trust_coeff, adapt):
    """One LARS step from rest (the momentum buffer starts as the update), You et al. 2017 as
    solo-learn's and BYOL's LARS write it: d = g + wd w scaled by eta ||w|| / (||g|| + wd ||w||)
    when the parameter is adapted, else the plain gradient (no decay); a zero weight or gradient
    (a BatchNorm bias at 0) is not scaled."""
    w, g = parameter.double(), gradient.double()
    if not adapt or w.norm() == 0 or g.norm() == 0:
        return w - lr * g
    ratio = trust_coeff * w.norm() / (g.norm() + weight_decay * w.norm() + 1e-8)
    return w - lr * ratio * (g + weight_decay * w)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-6])
@pytest.mark.parametrize("exclude", [True, False])
def test_lars_adapts_every_weight_it_does_not_exclude_whatever_the_weight_decay(weight_decay, exclude):
    """timm's Lars adapts only groups with non-zero weight decay unless always_adapt: at weight
    decay 0 each update was bitwise SGD's. Now: adapted unless excluded (the 1-D parameters)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()
    before = [p.detach().clone() for p in model.parameters()]
    config = OptimizerConfig(
        name="lars", weight_decay=weight_decay, exclude_bias_and_norm=exclude, trust_coeff=0.02, momentum=0.9
    )
    optimizer = build_optimizer(model, config, lr=0.5)
    model(torch.randn(16, 8, dtype=torch.float64)).square().mean().backward()
    gradients = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for (name, p), w, g in zip(model.named_parameters(), before, gradients):
        adapt = not (exclude and p.ndim <= 1)
        decay = 0.0 if exclude and p.ndim <= 1 else weight_decay
        expected = lars_step_written_out(w, g, 0.5, decay, 0.02, adapt)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14, msg=name)
        if p.ndim > 1:  # the weights: far from the SGD step
            assert not torch.allclose(p.detach(), w - 0.5 * g), name


@pytest.mark.parametrize("name, cls", [("sgd", "SGD"), ("lars", "Lars"), ("adam", "Adam"), ("adamw", "AdamW")])
def test_build_optimizer(name, cls):
    optimizer = build_optimizer(nn.Linear(4, 2), OptimizerConfig(name=name), lr=0.5)
    assert type(optimizer).__name__ == cls and optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; choose 'sgd', 'lars', 'adam' or 'adamw'"):
        build_optimizer(nn.Linear(4, 2), OptimizerConfig(name="adagrad"), lr=0.5)


def test_a_vits_position_embedding_and_class_token_are_spared_from_weight_decay():
    """timm's no_weight_decay() names them (DINO's and solo-learn's ViT recipes spare them too)."""
    model = create_backbone("vit_tiny", image_size=16, depth=1)
    _, no_decay = parameter_groups(model, 0.1, exclude_bias_and_norm=True)
    spared = {id(p) for p in no_decay["params"]}
    assert id(model.pos_embed) in spared and id(model.cls_token) in spared
    assert id(model.blocks[0].attn.qkv.weight) not in spared and id(model.blocks[0].norm1.weight) in spared


def intl_lr(t, warmup, total, ratio):
    """winci-ai/INTL's adjust_learning_rate (main.py, cifar/main.py) for a peak of 1, written out."""
    if t < warmup:
        return (t + 1) / warmup
    q = 0.5 * (1 + math.cos(math.pi * (t - warmup + 1) / (total - warmup)))
    return q + ratio * (1 - q)


def bolts_lr(t, warmup, total, ratio, start):
    """Lightning Bolts' LinearWarmupCosineAnnealingLR (solo-learn's warmup_cosine) in closed form for a
    peak of 1: linear from ``start`` at step 0 to the peak at step W, then the cosine to eta_min."""
    if t < warmup:
        return start + t * (1 - start) / (warmup - 1)
    return ratio + 0.5 * (1 - ratio) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule", ["intl", "bolts"])
def test_warmup_then_cosine_as_each_source_writes_it(schedule):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    warmup, total, ratio, start = 5, 25, 0.001, 3e-5
    scheduler = WarmupCosine(
        optimizer,
        warmup_steps=warmup,
        total_steps=total,
        min_lr_ratio=ratio,
        schedule=schedule,
        warmup_start_lr=start,
    )
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "intl":
        expected = [intl_lr(t, warmup, total, ratio) for t in range(total)]
        assert lrs[-1] == pytest.approx(ratio, rel=1e-12)  # the last step at the minimum
    else:
        expected = [bolts_lr(t, warmup, total, ratio, start) for t in range(total)]
        assert lrs[0] == start and lrs[warmup] == 1.0
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_a_loaded_schedule_continues_at_the_same_epoch_on_the_new_plan():
    """The checkpointed schedule is a position (step, steps per epoch): resumed with another peak
    lr, length and steps per epoch, it continues at the same point of training on the new plan."""

    def schedule(lr, steps_per_epoch, epochs):
        optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)
        return optimizer, WarmupCosine(
            optimizer,
            warmup_steps=2 * steps_per_epoch,
            total_steps=epochs * steps_per_epoch,
            min_lr_ratio=0.01,
            steps_per_epoch=steps_per_epoch,
        )

    optimizer, before = schedule(1.0, 10, epochs=10)
    for _ in range(30):  # 3 epochs of 10 steps
        optimizer.step()
        before.step()
    optimizer, after = schedule(0.5, 20, epochs=20)  # half the lr, twice the steps per epoch, twice the epochs
    optimizer.param_groups[0]["lr"] = 9.0  # what the checkpoint's optimizer state brings back
    after.load_state_dict(before.state_dict())
    assert after.last_epoch == 60  # epoch 3 of 20 steps
    expected = 0.5 * intl_lr(60, 40, 400, 0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_custom_norm_layers_count_as_norms_for_weight_decay():
    model = create_backbone("resnet18", norm="pln", act="pln", cifar_stem=True, width=16)
    _, no_decay = parameter_groups(model, 1e-4, exclude_bias_and_norm=True)
    assert id(model.layer1[0].bn1.weight) in {id(p) for p in no_decay["params"]}
    assert id(model.layer1[0].act2.weight) in {id(p) for p in no_decay["params"]}


def test_the_learning_rate_scales_with_the_linked_batch_size(tmp_path):
    """The commands link data.batch_size to the optimizer's batch_size (pretrain) and to the linear
    classifier's (linear); the lr is base x batch x devices x accumulation / 256. A model of one's
    own without it scales by the datamodule's batch_size."""
    from types import SimpleNamespace

    from spectral_ssl.commands import pretrain
    from spectral_ssl.optim import global_batch_size, scaled_lr

    cli = pretrain(
        [
            *("--data.batch_size=64", "--trainer.accumulate_grad_batches=2", "--trainer.max_steps=1"),
            *("--model.backbone.width=4", "--knn.every_n_epochs=0", "--spectrum.every_n_epochs=0"),
            *("--online_probe.every_n_epochs=0", "--trainer.enable_progress_bar=false"),
            *("--output_dir", str(tmp_path)),
        ]
    )
    config = cli.model.optimizer_config
    assert config.batch_size == 64
    lr = cli.model.optimizers().optimizer.param_groups[0]["lr"]
    schedule_peak = config.lr * 64 * 2 / 256
    assert float(lr) <= schedule_peak and cli.trainer.lr_scheduler_configs[0].scheduler.base_lrs[0] == schedule_peak
    trainer = SimpleNamespace(world_size=4, accumulate_grad_batches=2, datamodule=SimpleNamespace(batch_size=32))
    assert global_batch_size(trainer) == 256 and scaled_lr(0.3, trainer, batch_size=16) == 0.3 * 16 * 8 / 256
    with pytest.raises(ValueError, match="give the per-device batch_size"):
        global_batch_size(SimpleNamespace(world_size=1, accumulate_grad_batches=1, datamodule=None))

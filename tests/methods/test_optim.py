"""Optimizer groups and the warm-up + cosine schedule against their formulas."""

import math

import pytest
import torch
from torch import nn

from spectral_ssl.models import create_backbone
from spectral_ssl.optim import OptimizerConfig, WarmupCosine, build_optimizer, parameter_groups


def test_bias_and_norm_parameters_are_excluded_by_module_type():
    model = nn.Sequential(create_backbone("resnet18", cifar_stem=True, width=8), nn.Linear(64, 10))
    decay, no_decay = parameter_groups(model, 1e-4, exclude_bias_and_norm=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in no_decay["params"]} == {id(p) for m in norms for p in m.parameters()} | {id(model[1].bias)}
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    (everything,) = parameter_groups(model, 1e-4, exclude_bias_and_norm=False)
    assert len(everything["params"]) == len(list(model.parameters()))


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


def test_warmup_then_cosine_to_min_ratio():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    warmup, total, ratio = 5, 25, 0.001
    scheduler = WarmupCosine(optimizer, warmup_steps=warmup, total_steps=total, min_lr_ratio=ratio)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [(t + 1) / warmup for t in range(warmup)]
    expected += [
        ratio + (1 - ratio) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        for t in range(warmup, total)
    ]
    assert lrs == pytest.approx(expected, rel=1e-6)


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
    expected = 0.5 * (0.01 + 0.99 * (1 + math.cos(math.pi * (60 - 40) / (400 - 40))) / 2)
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

"""Train only the normalization parameters: frozen weights stay bitwise at their random init."""

from pathlib import Path

import lightning as L
import pytest
import torch

from spectral_ssl.commands import pretrain, supervised
from spectral_ssl.methods import INTL
from spectral_ssl.models import Projector, create_backbone
from spectral_ssl.models.norms import is_norm
from spectral_ssl.models.trainable import set_trainable
from spectral_ssl.optim import parameter_groups

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model.backbone.width=8", "--data.batch_size=64", "--trainer.enable_progress_bar=false"]


def norm_parameter_count(module):
    return sum(p.numel() for m in module.modules() if is_norm(m) for p in m.parameters(recurse=False))


@pytest.mark.parametrize(
    "norm, act", [("bn", "relu"), ("ln", "relu"), ("pln", "pln"), ("lng", "gelu"), ("iternorm", "relu")]
)
def test_counts_and_optimizer_groups(norm, act):
    backbone = create_backbone("resnet18", norm=norm, act=act, cifar_stem=True, width=16)
    head = Projector(backbone.num_features, [32], 16)
    trainable, total = set_trainable(backbone, [head], "norm_only")
    assert trainable == norm_parameter_count(backbone) > 0
    assert total == sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())
    model = torch.nn.ModuleList([backbone, head])
    assert sum(p.numel() for g in parameter_groups(model, 1e-4, True) for p in g["params"]) == trainable
    trainable, _ = set_trainable(backbone, [head], "norm_and_head")
    assert trainable == norm_parameter_count(backbone) + sum(p.numel() for p in head.parameters())
    assert set_trainable(backbone, [head], "all")[0] == total


def test_bad_modes_are_named():
    backbone = create_backbone("resnet18", norm="none", cifar_stem=True, width=8)
    with pytest.raises(ValueError, match="nothing to train"):
        set_trainable(backbone, [], "norm_only")
    with pytest.raises(ValueError, match="unknown trainable mode 'bn_only'"):
        set_trainable(backbone, [], "bn_only")


def test_norm_only_pretraining_leaves_every_other_weight_at_its_init(tmp_path):
    cli = pretrain(
        [
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "frozen",
            "--trainer.max_epochs=1",
            "--model.trainable=norm_only",
            "--model.projector_dims=[32,32]",
            *TINY,
        ]
    )
    trained = torch.load(tmp_path / "frozen" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    L.seed_everything(0)
    initial = INTL(**{k: v for k, v in cli.model.hparams.items() if not k.startswith("_")})
    norm_names = {
        f"backbone.{name}.{p}"
        for name, m in initial.backbone.named_modules()
        if is_norm(m)
        for p, _ in m.named_parameters(recurse=False)
    }
    changed = []
    for name, param in initial.named_parameters():
        if name in norm_names:
            changed.append(not torch.equal(trained[name], param))
        else:
            assert torch.equal(trained[name], param), f"{name} moved although frozen"
    assert any(changed), "no norm parameter was trained"


def test_supervised_reference_run(tmp_path):
    cli = supervised(
        [
            "--config",
            str(ROOT / "configs" / "supervised_digits.yaml"),
            "--output_dir",
            str(tmp_path),
            "--run_name",
            "sup",
            "--trainer.max_epochs=3",
            *TINY,
        ]
    )
    assert cli.model.num_trainable == cli.model.num_parameters
    assert cli.test_top1 > 0.5  # 10 classes: far above chance after three epochs

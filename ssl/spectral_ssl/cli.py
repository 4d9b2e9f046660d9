"""The ``spectral-ssl`` command: ``pretrain``, ``supervised`` and ``export``.

``spectral-ssl pretrain --config configs/quickstart.yaml [--section.key=value ...]`` is a
LightningCLI: ``--help``, ``--print_config``, several ``--config`` files and dotted overrides
(``--model.backbone.width=32``, ``--trainer.max_epochs=5``) all work, and an unknown key is an
error naming it. Outputs go to ``<output_dir>/<run_name>/``: TensorBoard logs, ``config.yaml``
and ``checkpoints/`` (``last.ckpt`` after every epoch). Running the same command again resumes
from ``last.ckpt`` (``--resume=false`` starts over).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning import LightningDataModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from .evaluation import KNNMonitor
from .methods import SSLMethod


class TrainCLI(LightningCLI):
    """LightningCLI with a run folder, automatic resume and a kNN monitor."""

    def __init__(self, *args, default_model: str = "spectral_ssl.methods.INTL", **kwargs) -> None:
        self.default_model = default_model
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="run", help="outputs go to <output_dir>/<run_name>/")
        parser.add_argument("--output_dir", type=str, default="checkpoints", help="parent folder of all runs")
        parser.add_argument("--resume", type=bool, default=True,
                            help="continue from <output_dir>/<run_name>/checkpoints/last.ckpt when it exists")
        parser.add_lightning_class_args(KNNMonitor, "knn")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "model": {"class_path": self.default_model},
            "data": {"class_path": "spectral_ssl.data.DigitsDataModule"},
        })

    @property
    def run_dir(self) -> Path:
        return Path(self.config_init["output_dir"]) / self.config_init["run_name"]

    def callback(self, kind: type[Callback]) -> Callback:
        return next(c for c in self.trainer.callbacks if isinstance(c, kind))

    def instantiate_trainer(self, **kwargs):
        if self.config_init["trainer"].get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run_dir.parent), name=self.run_dir.name, version="")
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        self.trainer = super().instantiate_trainer(**kwargs)
        checkpoint = self.callback(ModelCheckpoint)
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str(self.run_dir / "checkpoints")
        return self.trainer


def _fit(args: list[str], command: str, default_model: str) -> TrainCLI:
    argv, sys.argv = sys.argv, [f"spectral-ssl {command}", *args]  # LightningCLI reads sys.argv itself
    try:
        cli = TrainCLI(SSLMethod, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       seed_everything_default=0, save_config_kwargs={"overwrite": True},
                       auto_configure_optimizers=False, run=False, default_model=default_model)
    finally:
        sys.argv = argv
    last = Path(cli.callback(ModelCheckpoint).dirpath) / "last.ckpt"
    ckpt_path = None
    if cli.config_init["resume"] and last.exists():
        ckpt_path = str(last)
        print(f"Resuming from {last} (pass --resume=false to start over)", file=sys.stderr)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except FloatingPointError as error:
        sys.exit(f"error: {error}")
    return cli


def _print_knn(cli: TrainCLI) -> None:
    if cli.trainer.is_global_zero:
        print(cli.callback(KNNMonitor).summary())


def pretrain(args: list[str]) -> TrainCLI:
    """Self-supervised pretraining (see the module docstring); returns the CLI with its trainer."""
    cli = _fit(args, "pretrain", "spectral_ssl.methods.INTL")
    _print_knn(cli)
    return cli


def supervised(args: list[str]) -> TrainCLI:
    """The supervised reference run: the same options, a labelled classifier, top-1 on the held-out split."""
    cli = _fit(args, "supervised", "spectral_ssl.methods.SupervisedClassifier")
    _, test_loader = cli.datamodule.knn_dataloaders()
    cli.test_top1 = cli.trainer.validate(cli.model, dataloaders=test_loader, verbose=False)[0]["val/top1"]
    _print_knn(cli)
    if cli.trainer.is_global_zero:
        print(f"supervised top-1 on the held-out split: {100 * cli.test_top1:.2f}%")
    return cli


def export(args: list[str]) -> None:
    """Export a pretrained backbone (see :mod:`spectral_ssl.export`)."""
    from .export import main as export_main

    export_main(args)


COMMANDS = {"pretrain": pretrain, "supervised": supervised, "export": export}
USAGE = """usage: spectral-ssl <command> [options]

commands:
  pretrain   self-supervised pretraining (spectral-ssl pretrain --help)
  supervised the supervised reference run with the same options (spectral-ssl supervised --help)
  export     write a pretrained backbone as torchvision state_dict, safetensors, TorchScript, ONNX
             (spectral-ssl export --help)
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        sys.exit(f"spectral-ssl: unknown command {argv[0]!r}\n{USAGE}")
    command(argv[1:])


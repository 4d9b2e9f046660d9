"""The ``spectral-ssl`` command: ``pretrain``, ``supervised``, ``linear``, ``knn``, ``spectrum``, ``export``.

``spectral-ssl pretrain --config configs/quickstart.yaml [--section.key=value ...]`` is a
LightningCLI: ``--help``, ``--print_config``, several ``--config`` files and dotted overrides
(``--model.backbone.width=32``, ``--trainer.max_epochs=5``) all work, and an unknown key is an
error naming it. Outputs go to ``<output_dir>/<run_name>/``: TensorBoard logs, ``config.yaml``
and ``checkpoints/`` (``last.ckpt`` after every epoch, a link to the newest checkpoint). Running
the same command again resumes the run from its newest intact checkpoint (``--ckpt_path``
chooses another, ``--resume=false`` starts over); the rules are in :mod:`spectral_ssl.runs`.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path

import yaml
from lightning import LightningDataModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from . import evaluate
from . import export as export_command
from .checkpoints import training_loops
from .command import quiet_third_party_notices, reports_bad_input, resolve_config_arguments
from .data import ResumableLoader, SkippedImagesReport
from .engine import SpeedOptions
from .evaluation import KNNMonitor, LinearClassifier, OnlineLinearProbe, SpectrumMonitor
from .methods import SSLMethod
from .runs import (
    AtomicCheckpointIO,
    RunCheckpoint,
    choose_checkpoint,
    holds_a_run,
    move_aside,
    remove_partial_writes,
    resumable_changes,
)


class SaveRunConfig(SaveConfigCallback):
    """Writes the run's ``config.yaml`` into the run folder (``trainer.default_root_dir``) whatever
    the logger: Lightning's own callback writes it into the logger's folder (a CSVLogger's
    ``lightning_logs/version_N``, where the resume check would not find it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_unset=False, overwrite=True, multifile=self.multifile)


class TrainCLI(LightningCLI):
    """LightningCLI with a run folder, automatic resume, the representation monitors and the
    ``speed:`` section (:class:`~spectral_ssl.engine.SpeedOptions`)."""

    def __init__(
        self,
        *args,
        default_model: str | None = "spectral_ssl.methods.INTL",
        monitors: bool = True,
        run_key: str | None = None,
        **kwargs,
    ) -> None:
        self.default_model, self.monitors, self.run_key = default_model, monitors, run_key
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="run", help="outputs go to <output_dir>/<run_name>/")
        parser.add_argument("--output_dir", type=str, default="checkpoints", help="parent folder of all runs")
        parser.add_argument(
            "--resume",
            type=bool,
            default=True,
            help="continue from the newest intact checkpoint in <output_dir>/<run_name>/checkpoints/",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="with --resume=false: move a run already in the folder aside and start over",
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="the checkpoint to resume: a PATH, 'last' (the newest in checkpoints/) or 'hpc' "
            "(Lightning's SLURM requeue checkpoint); default: the newest intact of either",
        )
        parser.add_class_arguments(SpeedOptions, "speed", help="how the training step runs (results unchanged)")
        if self.monitors:
            parser.add_lightning_class_args(KNNMonitor, "knn")
            parser.add_lightning_class_args(OnlineLinearProbe, "online_probe")
            parser.add_lightning_class_args(SpectrumMonitor, "spectrum")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        if self.subclass_mode_model:  # an SSLMethod: its backbone is built for the data's image size
            parser.link_arguments("data.image_size", "model.init_args.backbone.image_size", apply_on="instantiate")
        defaults = {"checkpoint.save_last": "link", "checkpoint.enable_version_counter": False}
        # a default class's init_args would carry over into a class given later with the same argument
        # names (jsonargparse's rule: the digits' image_size 16 and num_workers 0 into ImageFolder), so
        # the defaults apply only when the command line and its configs name no class
        if "data" not in self.given:
            defaults["data"] = {"class_path": "spectral_ssl.data.DigitsDataModule"}
        if self.default_model and "model" not in self.given:
            defaults["model"] = {"class_path": self.default_model}
        parser.set_defaults(defaults)

    @property
    def run_dir(self) -> Path:
        run_dir = Path(self.config_init["output_dir"]).expanduser().resolve() / self.config_init["run_name"]
        return run_dir / self.run_key if self.run_key else run_dir

    def callback(self, kind: type[Callback]) -> Callback:
        return next(c for c in self.trainer.callbacks if isinstance(c, kind))

    def instantiate_trainer(self, **kwargs):
        trainer_config, speed = self.config_init["trainer"], self.config_init["speed"]
        kwargs.update(
            speed.trainer_arguments(
                accelerator=trainer_config.get("accelerator", "auto"),
                devices=trainer_config.get("devices", "auto"),
                num_nodes=trainer_config.get("num_nodes", 1),
                strategy=trainer_config.get("strategy"),
            )
        )
        given = trainer_config.get("callbacks") or []  # --trainer.callbacks: kept beside ours
        given = given if isinstance(given, list) else [given]
        kwargs["callbacks"] = [*given, *speed.callbacks(), SkippedImagesReport()]
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run_dir.parent), name=self.run_dir.name, version="")
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        if not trainer_config.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        self.trainer = super().instantiate_trainer(**kwargs)
        checkpoint = self.callback(ModelCheckpoint)
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str(self.run_dir / "checkpoints")
        return self.trainer


def _classes_given(args: list[str]) -> set[str]:
    """The sections (``model``, ``data``) whose class ``args`` name: ``--data=CLASS``,
    ``--data.class_path=CLASS``, or a ``--config`` YAML with ``data: {class_path: ...}``."""
    given, arguments = set(), iter(args)
    for arg in arguments:
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else next(arguments, "")
            try:
                loaded = yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports it
            if isinstance(loaded, dict):
                given |= {
                    key
                    for key, value in loaded.items()
                    if isinstance(value, str) or (isinstance(value, dict) and "class_path" in value)
                }
        elif arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if "." not in key or key.endswith(".class_path"):
                given.add(key.split(".", 1)[0])
    return given


def _cli(args: list[str], command: str, model_class=SSLMethod, **kwargs) -> TrainCLI:
    argv, sys.argv = sys.argv, [f"spectral-ssl {command}", *args]  # LightningCLI reads sys.argv itself
    TrainCLI.given = _classes_given(args)
    try:
        return TrainCLI(
            model_class,
            LightningDataModule,
            subclass_mode_model=model_class is SSLMethod,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"allow_abbrev": False},  # --trainer.max_epoch is a mistake, not max_epochs
            auto_configure_optimizers=False,
            run=False,
            **kwargs,
        )
    finally:
        sys.argv = argv


def _fit(cli: TrainCLI, datamodule: LightningDataModule | None = None) -> TrainCLI:
    data = getattr(datamodule, "data", datamodule) or cli.datamodule
    if getattr(data, "index_cache", "") is None:  # an ImageFolder's file index: built once, kept with the run
        data.index_cache = str(cli.run_dir / "index")
    cli.trainer.fit(cli.model, datamodule=datamodule or cli.datamodule, ckpt_path=_checkpoint_to_resume(cli))
    return cli


def _checkpoint_to_resume(cli: TrainCLI) -> str | None:
    """The run folder's rules (see :mod:`spectral_ssl.runs`): the checkpoint to resume (checked
    against this command's config), or None to start; a run in the way of ``--resume=false`` is
    refused or moved aside."""
    folder, run_dir, ckpt_path = Path(cli.callback(ModelCheckpoint).dirpath), cli.run_dir, cli.config_init["ckpt_path"]
    if not cli.config_init["resume"]:
        if ckpt_path:
            raise ValueError("--ckpt_path resumes a run; drop it or --resume=false")
        if holds_a_run(run_dir):
            if not cli.config_init["overwrite"]:
                raise ValueError(
                    f"{run_dir} already holds a run (checkpoints in {folder}); --resume=false does not "
                    "mix a new run into it: give a new --run_name, or add --overwrite=true to move the old "
                    "run aside first"
                )
            if rank_zero_only.rank == 0:  # Lightning's reading of the launcher's variables (torchrun, SLURM)
                print(f"Moved the old run aside to {move_aside(run_dir)}", file=sys.stderr)
        return None
    checkpoint = choose_checkpoint(ckpt_path, run_dir, folder)
    if checkpoint is None:
        return None
    changes = _check_resumable(cli, checkpoint)
    if rank_zero_only.rank == 0:
        print(f"Resuming from {checkpoint} (pass --resume=false to start over)", file=sys.stderr)
        if changes:
            print(
                f"Changed settings, applied from here on: {'; '.join(changes)} (the learning-rate schedule "
                "continues at the same epoch, planned for them)",
                file=sys.stderr,
            )
        for partial in remove_partial_writes(folder):
            print(f"Removed {partial}, a checkpoint write that was interrupted", file=sys.stderr)
    return str(checkpoint)


def _check_resumable(cli: TrainCLI, checkpoint: Path) -> list[str]:
    """:func:`~spectral_ssl.runs.resumable_changes` of this command's config, and a mid-epoch
    checkpoint's batch layout against this run's."""
    changes = resumable_changes(checkpoint, yaml.safe_load(cli.parser.dump(cli.config)))
    for state in training_loops(checkpoint).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", []):
        ResumableLoader.check_layout(state, cli.datamodule.batch_size, cli.trainer.world_size)
    return changes


def _print_knn(cli: TrainCLI) -> None:
    if cli.trainer.is_global_zero:
        print(cli.callback(KNNMonitor).summary())


@reports_bad_input
def pretrain(args: list[str]) -> TrainCLI:
    """Self-supervised pretraining (see the module docstring); returns the CLI with its trainer."""
    cli = _fit(_cli(args, "pretrain", default_model="spectral_ssl.methods.INTL"))
    _print_knn(cli)
    return cli


@reports_bad_input
def supervised(args: list[str]) -> TrainCLI:
    """The supervised reference run: the same options, a labelled classifier, top-1 on the held-out split."""
    cli = _fit(_cli(args, "supervised", default_model="spectral_ssl.methods.SupervisedClassifier"))
    _, test_loader = cli.datamodule.knn_dataloaders()
    cli.test_top1 = cli.trainer.validate(cli.model, dataloaders=test_loader, verbose=False)[0]["val/top1"]
    _print_knn(cli)
    if cli.trainer.is_global_zero:
        print(f"supervised top-1 on the held-out split: {100 * cli.test_top1:.2f}%")
    return cli


class LinearEvaluationData(LightningDataModule):
    """A pretraining datamodule seen through its linear-evaluation loaders (augmented labelled
    train images, clean validation images)."""

    def __init__(self, data) -> None:
        super().__init__()
        self.data, self.batch_size = data, data.batch_size

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def setup(self, stage: str | None = None) -> None:
        self.data.trainer = self.trainer  # its loaders shard over the processes and resume mid-epoch by it
        self.data.setup(stage)

    def train_dataloader(self):
        return self.data.linear_dataloaders(self.batch_size)[0]

    def val_dataloader(self):
        return self.data.knn_dataloaders(self.batch_size)[1]

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.data.on_before_batch_transfer(batch, dataloader_idx)

    def pop_skipped(self) -> list[str]:
        return self.data.pop_skipped()


@reports_bad_input
def linear(args: list[str]):
    """Linear evaluation of a checkpoint (``spectral-ssl linear CKPT [--config configs/linear/...]``):
    the ImageNet protocol through a Trainer, or ``--fast`` on cached features."""
    fast = [a for a in args if a in ("--fast", "--fast=true", "--fast=false")]
    args = [a for a in args if a not in fast]
    if fast and fast[-1] != "--fast=false":
        return evaluate.linear_fast(args)
    if args and not args[0].startswith("-"):  # the checkpoint as the first argument, the same from any folder
        args = [f"--model.checkpoint={Path(args[0]).expanduser().absolute()}", *args[1:]]
    cli = _cli(
        args, "linear", model_class=LinearClassifier, default_model=None, monitors=False, run_key=_evaluated_key(args)
    )
    data = LinearEvaluationData(cli.datamodule)
    with warnings.catch_warnings():  # the frozen backbone is in eval mode on purpose (its BN statistics)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        _fit(cli, data)
    metrics = cli.trainer.validate(cli.model, datamodule=data, verbose=False)[0]
    if cli.trainer.is_global_zero:
        print(
            f"linear top-1 {100 * metrics['linear/top1']:.2f}%, top-5 {100 * metrics['linear/top5']:.2f}% "
            f"(protocol: frozen backbone, RandomResizedCrop + flip, {cli.trainer.max_epochs} epochs)"
        )
    cli.metrics = metrics
    return cli


def _evaluated_key(args: list[str]) -> str | None:
    """``<file stem>-<first 12 hex digits of its SHA-256>`` of the checkpoint a linear evaluation
    evaluates: its classifier run lives in ``<output_dir>/<run_name>/<key>/``, so evaluating
    another checkpoint (or the same path rewritten) never resumes a classifier of another backbone."""
    given = [a.split("=", 1)[1] for a in args if a.startswith(("--model.checkpoint=", "--model.init_args.checkpoint="))]
    if not given or not Path(given[-1]).is_file():
        return None  # given in a config file, or missing (the model reports it)
    with open(given[-1], "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"{Path(given[-1]).stem}-{digest[:12]}"


COMMANDS = {
    "pretrain": pretrain,
    "supervised": supervised,
    "linear": linear,
    "knn": evaluate.knn,
    "spectrum": evaluate.spectrum,
    "export": export_command.main,
}
USAGE = """usage: spectral-ssl <command> [options]

commands:
  pretrain   self-supervised pretraining (spectral-ssl pretrain --help)
  supervised the supervised reference run with the same options (spectral-ssl supervised --help)
  linear     linear evaluation of a checkpoint: the ImageNet protocol, or --fast on cached features
             (spectral-ssl linear CKPT --config configs/linear/<dataset>.yaml)
  knn        kNN top-1 of a checkpoint, weighted (k=20, 200) and the INTL 5-NN L2 protocol
  spectrum   eigen-spectrum, effective rank, RankMe of a checkpoint's features (PNG + CSV)
  export     write a pretrained backbone as torchvision state_dict, safetensors, TorchScript, ONNX
             (spectral-ssl export --help)
"""


def entry_point() -> None:
    """The ``spectral-ssl`` console script: runs :func:`main`, exit status 0 on success."""
    main()


def main(argv: list[str] | None = None):
    """Runs ``spectral-ssl <command> ...`` and returns what the command returns (its results)."""
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_party_notices()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        sys.exit(f"spectral-ssl: unknown command {argv[0]!r}\n{USAGE}")
    return command(reports_bad_input(resolve_config_arguments)(argv[1:]))

"""The training commands: ``spectral-ssl pretrain``, ``supervised``, ``linear`` and ``finetune``.

``spectral-ssl pretrain --config configs/quickstart.yaml [--section.key=value ...]`` is a
LightningCLI: ``--help``, ``--print_config``, several ``--config`` files and dotted overrides
(``--model.backbone.width=32``, ``--trainer.max_epochs=5``) all work, and an unknown key is an
error naming it. Outputs go to the run folder ``<output_dir>/<run_name>/``
(:class:`~spectral_ssl.runs.RunFolder`): TensorBoard logs, ``config.yaml`` and ``checkpoints/``
(``last.ckpt`` after every epoch, a link to the newest checkpoint). Running the same command
again resumes the run from its newest intact checkpoint (``--ckpt_path`` chooses another,
``--resume=false`` starts over); the rules are in :mod:`spectral_ssl.runs`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning
import yaml
from lightning import LightningDataModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from ..checkpoints import check_same_data, training_data, training_loops
from ..data import LinearEvaluationData, ResumableLoader, SkippedImagesReport
from ..engine import SpeedOptions
from ..evaluation import HeldOutFeatures, KNNMonitor, LinearClassifier, OnlineLinearProbe, SpectrumMonitor
from ..methods import SSLMethod
from ..runs import (
    AtomicCheckpointIO,
    RunCheckpoint,
    RunFolder,
    choose_checkpoint,
    remove_partial_writes,
    resumable_changes,
)
from .common import DEFAULT_DATA, add_config_arguments, parse_with_default_classes, reports_bad_input


class SaveRunConfig(SaveConfigCallback):
    """Writes the run's ``config.yaml`` to ``config_filename``, the run folder's (an absolute path,
    set by :class:`TrainCLI`), whatever the logger: Lightning's own callback writes it into the
    logger's folder (a CSVLogger's ``lightning_logs/version_N``, where the resume check would not
    find it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = Path(self.config_filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_unset=False, overwrite=True, multifile=self.multifile)


class TrainCLI(LightningCLI):
    """LightningCLI for one training command (``args``: its command line, never ``sys.argv``),
    with a run folder (:attr:`run`), automatic resume, the representation monitors and the
    ``speed:`` section (:class:`~spectral_ssl.engine.SpeedOptions`).

    ``default_model``: the model class when the command line and its configs name none (the
    dataset's default is :data:`DEFAULT_DATA`); see :meth:`parse_arguments`.
    ``evaluates_checkpoint``: the command evaluates ``model.checkpoint``, which may also be given
    as the first positional argument (or a weights file, ``model.backbone.weights``); its
    classifier runs in the run's :meth:`RunFolder.evaluation` folder of that file. ``defaults``:
    the command's own defaults of options (``{"model.backbone_lr": 0.004}``)."""

    def __init__(
        self,
        model_class: type,
        args: list[str],
        command: str,
        description: str,
        default_model: str | None = None,
        monitors: bool = True,
        evaluates_checkpoint: bool = False,
        defaults: dict | None = None,
    ) -> None:
        self.monitors, self.evaluates_checkpoint, self.defaults = monitors, evaluates_checkpoint, defaults or {}
        self.default_classes = {"data": DEFAULT_DATA, **({"model": default_model} if default_model else {})}
        super().__init__(
            model_class,
            None,  # any LightningDataModule, DEFAULT_DATA when none is named
            subclass_mode_model=model_class is SSLMethod,
            seed_everything_default=0,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            # --trainer.max_epoch is a mistake, not max_epochs
            parser_kwargs={
                "allow_abbrev": False,
                "prog": f"spectral-ssl {command}",
                "description": description,
                "print_config": None,  # ours: printed once the default classes are in (parse_arguments)
            },
            auto_configure_optimizers=False,
            run=False,
            args=args,
        )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Lightning's parser with our ``--config`` and ``--print_config`` (:func:`.common.add_config_arguments`)."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.__version__}"])
        parser = self.parser_class(**kwargs)
        add_config_arguments(parser)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        """Parses ``args`` (Lightning's own method warns when ``sys.argv`` holds the command's
        name), the default classes applied by :func:`.common.parse_with_default_classes`."""
        bases = {"data": self._datamodule_class, "model": self._model_class}
        evaluated = (
            (lambda c: {"data": training_data(c.model.checkpoint or c.evaluate)[0]})
            if self.evaluates_checkpoint
            else None
        )
        self.config = parse_with_default_classes(parser, args, self.default_classes, bases, evaluated)

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.add_lightning_class_args(
            self._model_class,
            "model",
            subclass_mode=self.subclass_mode_model,
            required="model" not in self.default_classes,
        )
        parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.evaluates_checkpoint:
            parser.add_argument(
                "evaluate",
                metavar="CKPT",
                nargs="?",
                type=str | None,
                default=None,
                help="the checkpoint to evaluate (the same as --model.checkpoint)",
            )
            parser.add_argument(
                "--other_data",
                type=bool,
                default=False,
                help="evaluate on data of another image size or number of classes than the checkpoint's, on purpose",
            )
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
            parser.link_arguments(("output_dir", "run_name"), "spectrum.folder", compute_fn=spectrum_folder)
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        if self.subclass_mode_model:  # an SSLMethod: its backbone is built for the data's image and view sizes
            parser.link_arguments("data.image_size", "model.init_args.backbone.image_size", apply_on="instantiate")
            parser.link_arguments("data.view_sizes", "model.init_args.backbone.view_sizes", apply_on="instantiate")
        batch_size = "model.init_args.optimizer.batch_size" if self.subclass_mode_model else "model.batch_size"
        parser.link_arguments("data.batch_size", batch_size, apply_on="instantiate")  # the lr scaling's batch
        parser.set_defaults({"checkpoint.save_last": "link", "checkpoint.enable_version_counter": False})
        parser.set_defaults(self.defaults)

    def before_instantiate_classes(self) -> None:
        """The parsed config completed: the evaluated checkpoint (positional or
        ``--model.checkpoint``, whichever form gave it; or the weights file), and the run folder."""
        self.run = RunFolder.named(self.config.output_dir, self.config.run_name)
        self.index = self.run.index
        if self.evaluates_checkpoint:
            evaluated = self._evaluated_checkpoint()
            self.run = self.run.evaluation(evaluated)
            if self.config.model.checkpoint:
                self.index = RunFolder.of_checkpoint(evaluated).index  # the pretraining run's file index
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": str(self.run.config)}

    def _evaluated_checkpoint(self) -> str:
        """``model.checkpoint`` from the parsed config, merged with the positional checkpoint, as
        an absolute path (so the same from any folder); without one, ``model.backbone.weights``."""
        given, positional = self.config.model.checkpoint, self.config.evaluate
        if given and positional and Path(given).expanduser().resolve() != Path(positional).expanduser().resolve():
            raise ValueError(
                f"two checkpoints to evaluate: {positional} (positional) and --model.checkpoint={given}; give one"
            )
        checkpoint = given or positional
        weights = self.config.model.backbone.weights
        if not checkpoint and weights:
            if not Path(weights).expanduser().is_file():
                raise FileNotFoundError(f"no weights file {weights} (model.backbone.weights)")
            self.config.model.backbone.weights = str(Path(weights).expanduser().absolute())
            return self.config.model.backbone.weights
        if not checkpoint:
            raise ValueError(
                f"no checkpoint to evaluate: spectral-ssl {self.parser.prog.split()[-1]} CKPT (or --model.checkpoint="
                "CKPT, or model: {checkpoint: CKPT} in a config; or a weights file and its architecture: "
                "--model.backbone.weights=PATH --model.backbone.name=...)"
            )
        if not Path(checkpoint).expanduser().is_file():
            raise FileNotFoundError(f"no checkpoint {checkpoint} to evaluate")
        self.config.model.checkpoint = str(Path(checkpoint).expanduser().absolute())
        self.config.evaluate = None  # one place holds it: model.checkpoint, as config.yaml saves it
        return self.config.model.checkpoint

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
            kwargs["logger"] = TensorBoardLogger(save_dir=str(self.run.path.parent), name=self.run.name, version="")
        kwargs.setdefault("default_root_dir", str(self.run.path))
        if not trainer_config.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        if self.monitors:  # one held-out feature extraction per epoch end for the three
            HeldOutFeatures.share(*(self.config_init[name] for name in ("knn", "online_probe", "spectrum")))
        self.trainer = super().instantiate_trainer(**kwargs)
        checkpoint = self.callback(ModelCheckpoint)
        if checkpoint.dirpath is None:
            checkpoint.dirpath = str(self.run.checkpoints)
        return self.trainer

    def fit(self, datamodule: LightningDataModule | None = None) -> None:
        """``trainer.fit`` of the model on ``datamodule`` (default: the parsed one), resumed by the
        run folder's rules. An ImageFolder's file index is cached in :attr:`index` (built once)."""
        data = self.datamodule
        if getattr(data, "index_cache", "") is None:
            data.index_cache = str(self.index)
        self.trainer.fit(self.model, datamodule=datamodule or data, ckpt_path=_checkpoint_to_resume(self))


def spectrum_folder(output_dir: str, run_name: str) -> str:
    """Where the spectrum monitor writes its per-epoch PNG + CSV: the run folder's ``spectrum/``."""
    return str(RunFolder.named(output_dir, run_name).spectrum)


def _checkpoint_to_resume(cli: TrainCLI) -> str | None:
    """The run folder's rules (see :mod:`spectral_ssl.runs`): the checkpoint to resume (checked
    against this command's config), or None to start; a run in the way of ``--resume=false`` is
    refused or moved aside."""
    run, ckpt_path = cli.run, cli.config_init["ckpt_path"]
    if not cli.config_init["resume"]:
        if ckpt_path:
            raise ValueError("--ckpt_path resumes a run; drop it or --resume=false")
        if run.holds_a_run():
            if not cli.config_init["overwrite"]:
                raise ValueError(
                    f"{run.path} already holds a run (checkpoints in {run.checkpoints}); --resume=false does "
                    "not mix a new run into it: give a new --run_name, or add --overwrite=true to move the old "
                    "run aside first"
                )
            if rank_zero_only.rank == 0:  # Lightning's reading of the launcher's variables (torchrun, SLURM)
                print(f"Moved the old run aside to {run.move_aside()}", file=sys.stderr)
        return None
    checkpoint = choose_checkpoint(ckpt_path, run)
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
        for partial in remove_partial_writes(run.checkpoints):
            print(f"Removed {partial}, a checkpoint write that was interrupted", file=sys.stderr)
    return str(checkpoint)


def _check_resumable(cli: TrainCLI, checkpoint: Path) -> list[str]:
    """:func:`~spectral_ssl.runs.resumable_changes` of this command's config, and a mid-epoch
    checkpoint's batch layout against this run's."""
    changes = resumable_changes(checkpoint, yaml.safe_load(cli.parser.dump(cli.config)))
    for state in training_loops(checkpoint).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", []):
        ResumableLoader.check_layout(
            state, cli.datamodule.batch_size, cli.trainer.world_size, cli.trainer.accumulate_grad_batches
        )
    return changes


def _print_knn(cli: TrainCLI) -> None:
    if cli.trainer.is_global_zero:
        print(cli.callback(KNNMonitor).summary())


@reports_bad_input
def pretrain(args: list[str]) -> TrainCLI:
    """Self-supervised pretraining (INTL by default; method, backbone and data from --config).
    Returns the CLI with its trainer."""
    cli = TrainCLI(
        SSLMethod,
        args,
        "pretrain",
        "Self-supervised pretraining (INTL by default; --model=BarlowTwins, VICReg, ...).",
        default_model="spectral_ssl.methods.INTL",
    )
    cli.fit()
    _print_knn(cli)
    return cli


@reports_bad_input
def supervised(args: list[str]) -> TrainCLI:
    """The supervised reference run: pretrain's options, a labelled classifier, top-1 on the held-out split.
    Returns the CLI, its ``test_top1`` that top-1."""
    cli = TrainCLI(
        SSLMethod,
        args,
        "supervised",
        "The supervised reference run: pretrain's options, a labelled classifier, top-1 on the held-out split.",
        default_model="spectral_ssl.methods.SupervisedClassifier",
    )
    cli.fit()
    _, test_loader = cli.datamodule.knn_dataloaders()
    cli.test_top1 = cli.trainer.validate(cli.model, dataloaders=test_loader, verbose=False)[0]["val/top1"]
    _print_knn(cli)
    if cli.trainer.is_global_zero:
        print(f"supervised top-1 on the held-out split: {100 * cli.test_top1:.2f}%")
    return cli


@reports_bad_input
def linear(args: list[str]) -> TrainCLI:
    """Linear evaluation of a checkpoint, the ImageNet protocol (spectral-ssl linear CKPT --config linear/<dataset>).
    ``linear-fast`` is the quick number on cached features. Returns the CLI, its ``metrics`` the
    final validation's."""
    cli = TrainCLI(
        LinearClassifier,
        args,
        "linear",
        "Linear evaluation of a checkpoint, the ImageNet protocol: a frozen backbone, a linear classifier "
        "trained on RandomResizedCrop + flip views, top-1 and top-5 on the clean validation images "
        "(spectral-ssl linear CKPT --config linear/<dataset>). The quick number: spectral-ssl linear-fast.",
        monitors=False,
        evaluates_checkpoint=True,
    )
    return _train_classifier(cli, "linear", "frozen backbone")


@reports_bad_input
def finetune(args: list[str]) -> TrainCLI:
    """Fine-tuning of a checkpoint: backbone and a linear classifier trained together, on all labels or a
    fraction (spectral-ssl finetune CKPT --config finetune/<dataset>). Returns the CLI, its ``metrics`` the
    final validation's."""
    cli = TrainCLI(
        LinearClassifier,
        args,
        "finetune",
        "Fine-tuning of a checkpoint: the backbone (train mode) and a linear classifier trained together with "
        "their own learning rates, on RandomResizedCrop + flip views of all labelled images or of a subset "
        "(--data.init_args.label_fraction=0.1, or label_subset=FILE: the official 1% / 10% ImageNet lists); top-1 "
        "and top-5 on the clean validation images (spectral-ssl finetune CKPT --config finetune/<dataset>).",
        monitors=False,
        evaluates_checkpoint=True,
        defaults={"model.backbone_lr": 0.004, "model.milestones": [], "run_name": "finetune"},
    )
    return _train_classifier(cli, "fine-tuned", "backbone fine-tuned")


def _train_classifier(cli: TrainCLI, name: str, protocol: str) -> TrainCLI:
    """``linear`` and ``finetune``: the data checked against the checkpoint's, the classifier
    trained on the labelled images (:class:`~spectral_ssl.data.LinearEvaluationData`), validated,
    its numbers printed and kept in ``cli.metrics``."""
    if not cli.config_init["other_data"]:
        data, checkpoint = cli.datamodule, cli.model.hparams.checkpoint
        check_same_data(training_data(checkpoint)[1], data.image_size, getattr(data, "num_classes", None), checkpoint)
    data = LinearEvaluationData(cli.datamodule)
    with warnings.catch_warnings():  # a frozen backbone is in eval mode on purpose (its BN statistics)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        cli.fit(data)
    metrics = cli.trainer.validate(cli.model, datamodule=data, verbose=False)[0]
    if cli.trainer.is_global_zero:
        images = cli.datamodule.labelled_indices()
        labelled = "all labelled images" if images is None else f"{len(images):,} labelled images"
        print(
            f"{name} top-1 {100 * metrics['linear/top1']:.2f}%, top-5 {100 * metrics['linear/top5']:.2f}% "
            f"(protocol: {protocol}, RandomResizedCrop + flip, {labelled}, {cli.trainer.max_epochs} epochs)"
        )
    cli.metrics = metrics
    return cli

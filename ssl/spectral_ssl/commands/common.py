"""What every ``spectral-ssl`` command shares, so that all of them are used the same way: one
jsonargparse parser each (``--help``, ``--config FILE``, ``--print_config``, dotted overrides, an
error naming any unknown key; the Lightning commands get theirs from LightningCLI, which is built
on it), ``--config NAME`` for the shipped configs (:class:`ShippedConfigFile`, the parser's own
config action), bad input reported as one line, ``error: ...``, with exit status 1 and no
traceback, and a console without other packages' notices."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import posixpath
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from ..data import UnreadableImageError
from ..runs import CheckpointWriteError

BAD_INPUT = (FileNotFoundError, ValueError, FloatingPointError, UnreadableImageError, CheckpointWriteError)
"""What a user can fix (a path, a setting, the data, the disk): reported in one line."""

Result = TypeVar("Result")


THIRD_PARTY_NOTICES = (  # (category, message pattern): other packages' notices no user can act on
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),  # Lightning's pytree helper, torch >= 2.10
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),  # the TorchScript export, kept on purpose (see export)
    # torchvision 0.29 deprecates its image codecs for TorchCodec; decode_jpeg (nvJPEG) is still what it ships
    (DeprecationWarning, r"The image decoding and encoding capabilities of TorchVision are deprecated"),
    (UserWarning, r"Checkpoint directory .* exists and is not empty"),  # resuming a run writes into its folder
)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")  # Lightning's advertisement for its cloud logger


def quiet_third_party_notices() -> None:
    """Silences what the user can do nothing about: :data:`THIRD_PARTY_NOTICES` (deprecations
    inside other packages, and Lightning's note that a resumed run's checkpoint folder is not
    empty), jsonargparse's deprecation notices (its own switch, ``JSONARGPARSE_DEPRECATION_WARNINGS``,
    set to ``off`` unless already set) and Lightning's cloud-logger tip. Everything else shows."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for category, message in THIRD_PARTY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_a_tip not in rank_zero.filters:
        rank_zero.addFilter(_not_a_tip)


SHIPPED_CONFIGS = next(
    (
        folder
        for folder in (Path(__file__).parents[1] / "configs", Path(__file__).parents[3] / "configs")
        if (folder / "quickstart.yaml").is_file()
    ),
    None,
)
"""The shipped configs: inside the installed package (a wheel), or the source checkout's ``configs/``."""


def resolve_config(value: str) -> list[str]:
    """The YAML files a ``--config`` value stands for, in the order they apply.

    A shipped config's name (``cifar10/intl``, ``quickstart``, ``configs/linear/digits.yaml``, or
    the path of a file in the shipped folder, from anywhere) is composed: its folder's
    ``base.yaml`` (the dataset, devices, precision, monitors) when there is one, then the file
    itself (the method: model, epochs, batch). ``<method>_<variant>`` with no file of its own is
    ``<method>.yaml`` then the folder's ``<variant>.yaml`` (``cifar10/intl_vit_small``: ViT-Small
    in place of the ResNet). A part alone (``cifar10/base``) is that file. Any other existing
    file, and inline YAML, is taken as given."""
    name = shipped_name(value)
    if name is None:
        return [value]
    if name in shipped_config_names():
        return [str(part) for part in _composed(name)]
    if (SHIPPED_CONFIGS / f"{name}.yaml").is_file():  # a part: a base or a variant file
        return [str(SHIPPED_CONFIGS / f"{name}.yaml")]
    names = ", ".join(shipped_config_names())
    raise FileNotFoundError(f"--config {value}: no such file, nor a shipped config of that name (shipped: {names})")


def shipped_name(value: str) -> str | None:
    """``cifar10/intl`` for any way of naming a shipped config (or a part of one); None for
    inline YAML and for files outside the shipped folder."""
    if any(c in value for c in ":{\n"):
        return None
    path = Path(value).expanduser()
    if path.is_file():
        if SHIPPED_CONFIGS is None or SHIPPED_CONFIGS.resolve() not in path.resolve().parents:
            return None
        value = path.resolve().relative_to(SHIPPED_CONFIGS.resolve()).as_posix()
    elif SHIPPED_CONFIGS is None:
        raise FileNotFoundError(f"--config {value}: no such file (and no shipped configs were found)")
    return posixpath.normpath(value).removeprefix("configs/").removesuffix(".yaml")


def _composed(name: str) -> list[Path]:
    """The files of a name of :func:`shipped_config_names`."""
    folder, _, stem = name.rpartition("/")
    directory = SHIPPED_CONFIGS / folder
    base = [directory / "base.yaml"] if (directory / "base.yaml").is_file() else []
    if (directory / f"{stem}.yaml").is_file():
        return [*base, directory / f"{stem}.yaml"]
    method, variant = next(
        (stem[: -len(v) - 1], v) for v in VARIANTS if stem.endswith(f"_{v}") and (directory / f"{v}.yaml").is_file()
    )
    return [*base, directory / f"{method}.yaml", directory / f"{variant}.yaml"]


def shipped_config_names() -> list[str]:
    """Every name ``--config`` takes: the files, and each method of a folder with each of its
    variants (``<method>_vit_small``); base and variant files are parts, not configs."""
    names = []
    for folder in sorted({p.parent for p in SHIPPED_CONFIGS.rglob("*.yaml")}):
        prefix = "" if folder == SHIPPED_CONFIGS else f"{folder.relative_to(SHIPPED_CONFIGS)}/"
        files = sorted(p.stem for p in folder.glob("*.yaml"))
        variants = [f for f in files if f in VARIANTS]
        methods = [f for f in files if f != "base" and f not in VARIANTS]
        names += [prefix + m for m in methods] + [f"{prefix}{m}_{v}" for m in methods for v in variants]
    return sorted(names)


VARIANTS = ("vit_small", "cpu")
"""Files of a dataset folder that go on top of any of its methods (``<method>_<variant>``)."""


class ShippedConfigFile(ActionConfigFile):
    """jsonargparse's ``--config`` action, the value passed through :func:`resolve_config` first:
    ``--config cifar10/intl`` is the shipped config of that name, composed from its files, from
    any folder. A composed run is named after the config (``cifar10_intl``) unless one of its
    files or an earlier ``--run_name`` names it (a later ``--run_name`` wins as any later option).

    A file outside the shipped folder that sets ``data.init_args`` but names no datamodule, when
    none is named before it (a copy of a method file given alone), is refused: it would
    otherwise train on the default digits."""

    def __call__(self, parser, cfg, values, option_string=None):
        files = resolve_config(values)
        if len(files) > 1 and _has_option(parser, "run_name") and cfg.get("run_name") == parser.get_default("run_name"):
            super().__call__(parser, cfg, f"run_name: {shipped_name(values).replace('/', '_')}", option_string)
        if len(files) == 1 and shipped_name(values) is None:
            _refuse_a_dataset_without_class(values, cfg)
        for file in files:
            super().__call__(parser, cfg, file, option_string)


def _refuse_a_dataset_without_class(value: str, cfg) -> None:
    path = Path(value).expanduser()
    if not path.is_file():
        return
    try:
        data = (yaml.safe_load(path.read_text()) or {}).get("data")
    except (yaml.YAMLError, AttributeError):
        return  # jsonargparse reports what is wrong with the file
    named = cfg.get("data.class_path") if isinstance(cfg.get("data"), Namespace) else None
    if isinstance(data, dict) and "init_args" in data and "class_path" not in data and not named:
        raise ValueError(
            f"--config {value} sets data.init_args but names no datamodule, and no config before it does (a "
            "method file alone has no dataset): give its dataset's base first, e.g. --config cifar10/base "
            f"--config {value}, or add data.class_path to it"
        )


def _has_option(parser, name: str) -> bool:
    try:
        parser.get_default(name)
    except KeyError:
        return False
    return True


CONFIG_HELP = "a YAML file with any of these options, or a shipped config's name (cifar10/intl); may repeat"


DEFAULT_DATA = "spectral_ssl.data.DigitsDataModule"
"""The dataset when a command names none: the built-in digits (no download)."""


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A command's parser: ``--config`` files, ``--print_config`` (printed by
    :func:`parse_with_default_classes`), no abbreviated keys (``--max_image`` is a mistake, not
    ``--max_images``)."""
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False, print_config=None)
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: ArgumentParser) -> None:
    """``-c/--config`` (:class:`ShippedConfigFile`) and ``--print_config``, a plain flag that
    :func:`parse_with_default_classes` acts on (the parser's own must be off: ``print_config=None``)."""
    parser.add_argument("-c", "--config", action=ShippedConfigFile, help=CONFIG_HELP)
    parser.add_argument(
        "--print_config", action="store_true", help="print the parsed config (a YAML file of it) and exit"
    )


def parse_with_default_classes(
    parser: ArgumentParser,
    args: list[str],
    defaults: Mapping[str, str | dict],
    bases: Mapping[str, type],
    better_defaults: Callable[[Namespace], Mapping[str, dict | None]] | None = None,
) -> Namespace:
    """``parser.parse_args(args)`` with a default class for each section of ``defaults``
    (``{"data": DEFAULT_DATA}``) that applies only when no argument names that section's class.
    As parser defaults they would carry their init_args into a class named later (jsonargparse's
    rule: the digits' image_size 16 and num_workers 0 into an ImageFolder). So the first parse has
    none. When it fails, or fills a section with its base class (``bases``; what jsonargparse does
    for ``--data.batch_size`` or ``--model.backbone.width`` with no class named), it is tried
    again with the default class of ``data``, then of ``model``, then both; the first that parses
    with real classes wins (an error of another kind fails every try and is reported from the
    last). A section left empty gets its default class. ``better_defaults(config)``: defaults known
    once the rest is parsed (an evaluated checkpoint's own dataset, a whole section with its
    init_args): a section that took its default takes these instead (the command line's values for
    it still apply). The parser's ``--print_config`` (a plain flag, see :func:`command_parser`)
    then prints the config with its classes and exits."""
    given = defaults
    defaults = {key: value if isinstance(value, dict) else {"class_path": value} for key, value in defaults.items()}
    tries = [set(chosen) for chosen in ((), ("data",), ("model",), ("data", "model"))]
    tries = [chosen for chosen in tries if chosen <= defaults.keys()]
    for attempt, chosen in enumerate(tries):
        parser.set_defaults({key: defaults[key] if key in chosen else None for key in defaults})
        parser.exit_on_error = last = attempt == len(tries) - 1
        try:
            config = parser.parse_args(args)
        except ArgumentError:
            continue
        finally:
            parser.exit_on_error = True
        if last or not any(_holds_class(config.get(key), bases[key]) for key in defaults.keys() - chosen):
            break
    if empty := {key: value for key, value in defaults.items() if config.get(key) is None}:
        parser.set_defaults(empty)
        config = parser.parse_args(args)
    if better_defaults is not None:  # the sections that took their default, with better ones now known
        better = {key: value for key, value in better_defaults(config).items() if value}
        taken = (chosen | empty.keys()) & better.keys()
        if taken:
            return parse_with_default_classes(parser, args, {**given, **{k: better[k] for k in taken}}, bases)
    if config.pop("print_config"):
        print(parser.dump(config, skip_none=False), end="")
        sys.exit(0)
    return config


def _holds_class(section, cls: type) -> bool:
    """Whether a parsed subclass section is of exactly ``cls``."""
    if section is None or "class_path" not in section:
        return False
    module, _, name = section.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None) is cls


def reports_bad_input(command: Callable[[list[str]], Result]) -> Callable[[list[str]], Result]:
    """Runs ``command(args)``; :data:`BAD_INPUT` exits with ``error: <what and how to fix it>``
    (:func:`reported_error`)."""

    @functools.wraps(command)
    def run(args: list[str]) -> Result:
        try:
            return command(args)
        except BAD_INPUT as error:
            sys.exit(f"error: {reported_error(error)}")

    return run


def reported_error(error: BaseException) -> BaseException:
    """The error a user should read: a class's own error (a model's ValueError naming the setting)
    raised while jsonargparse instantiates it comes wrapped in jsonargparse's "Does not validate
    against any of the Union subtypes" with the whole parsed namespace; that wrapper is dropped."""
    while isinstance(error.__cause__, BAD_INPUT) and _raised_in(error, "jsonargparse"):
        error = error.__cause__
    return error


def _raised_in(error: BaseException, package: str) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__", "").split(".")[0] == package

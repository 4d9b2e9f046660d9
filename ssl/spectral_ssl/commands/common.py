"""What every ``spectral-ssl`` command shares, so that all of them are used the same way: one
jsonargparse parser each (``--help``, ``--config FILE``, ``--print_config``, dotted overrides, an
error naming any unknown key; the Lightning commands get theirs from LightningCLI, which is built
on it), ``--config NAME`` for the shipped configs (:class:`ShippedConfigFile`, the parser's own
config action), bad input reported as one line, ``error: ...``, with exit status 1 and no
traceback, and a console without other packages' notices."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser

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


def shipped_config_names() -> list[str]:
    return sorted(str(p.relative_to(SHIPPED_CONFIGS).with_suffix("")) for p in SHIPPED_CONFIGS.rglob("*.yaml"))


def resolve_config(value: str) -> str:
    """A ``--config`` value: a YAML file as given when it exists, else the shipped config of that
    name (``cifar10/intl``, ``quickstart``, ``configs/linear/digits.yaml`` from anywhere). Inline
    YAML (jsonargparse takes it too) passes through."""
    if Path(value).is_file() or any(c in value for c in ":{\n"):
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml")
    if SHIPPED_CONFIGS is not None and (SHIPPED_CONFIGS / f"{name}.yaml").is_file():
        return str(SHIPPED_CONFIGS / f"{name}.yaml")
    names = ", ".join(shipped_config_names()) if SHIPPED_CONFIGS is not None else "none found"
    raise FileNotFoundError(f"--config {value}: no such file, nor a shipped config of that name (shipped: {names})")


class ShippedConfigFile(ActionConfigFile):
    """jsonargparse's ``--config`` action, the value passed through :func:`resolve_config` first:
    ``--config cifar10/intl`` is the shipped config of that name from any folder."""

    def __call__(self, parser, cfg, values, option_string=None):
        super().__call__(parser, cfg, resolve_config(values), option_string)


CONFIG_HELP = "a YAML file with any of these options, or a shipped config's name (cifar10/intl); may repeat"


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A subcommand's parser: ``--config`` files, no abbreviated keys (``--max_image`` is a
    mistake, not ``--max_images``)."""
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", action=ShippedConfigFile, help=CONFIG_HELP)
    return parser


def reports_bad_input(command: Callable[[list[str]], Result]) -> Callable[[list[str]], Result]:
    """Runs ``command(args)``; :data:`BAD_INPUT` exits with ``error: <what and how to fix it>``."""

    @functools.wraps(command)
    def run(args: list[str]) -> Result:
        try:
            return command(args)
        except BAD_INPUT as error:
            sys.exit(f"error: {error}")

    return run

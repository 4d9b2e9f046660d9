"""What every ``spectral-ssl`` subcommand shares, so that all six are used the same way: a
jsonargparse parser (``--help``, ``--config FILE``, ``--print_config``, dotted overrides, an error
naming any unknown key; the Lightning commands get the same from LightningCLI, which is built on
it), and bad input reported as one line, ``error: ...``, with exit status 1 and no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser

from .data import UnreadableImageError
from .runs import CheckpointWriteError

BAD_INPUT = (FileNotFoundError, ValueError, FloatingPointError, UnreadableImageError, CheckpointWriteError)
"""What a user can fix (a path, a setting, the data, the disk): reported in one line."""

Result = TypeVar("Result")


def command_parser(prog: str, description: str) -> ArgumentParser:
    """A subcommand's parser: ``--config`` files, no abbreviated keys (``--max_image`` is a
    mistake, not ``--max_images``)."""
    parser = ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
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

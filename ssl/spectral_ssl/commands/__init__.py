"""The ``spectral-ssl`` command: ``spectral-ssl <command> [options]``.

Each command parses its own options with one parser (``spectral-ssl <command> --help``): the
training commands (:mod:`.train`) with LightningCLI, given the command's arguments; the others
(:mod:`.evaluate`, :mod:`.export`) with jsonargparse. What they share (``--config NAME`` for the
shipped configs, one ``error:`` line for bad input) is :mod:`.common`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

from .common import quiet_third_party_notices
from .evaluate import embedding, knn, linear_fast, spectrum
from .export import export
from .train import finetune, linear, pretrain, supervised

COMMANDS: dict[str, Callable[[list[str]], object]] = {
    "pretrain": pretrain,
    "supervised": supervised,
    "linear": linear,
    "linear-fast": linear_fast,
    "finetune": finetune,
    "knn": knn,
    "spectrum": spectrum,
    "embedding": embedding,
    "export": export,
}
"""Each command: a function of its arguments that returns its results."""


def usage() -> str:
    """The top-level help: each command with the first sentence of its docstring."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {name:<{width}}{_summary(command)}" for name, command in COMMANDS.items()]
    return "usage: spectral-ssl <command> [options]   (spectral-ssl <command> --help)\n\ncommands:\n" + "\n".join(lines)


def _summary(command: Callable) -> str:
    return inspect.getdoc(command).split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")


def main(argv: list[str] | None = None):
    """Runs ``spectral-ssl <command> ...`` (``argv``: the words after ``spectral-ssl``; default
    ``sys.argv[1:]``) and returns what the command returns (its results)."""
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_party_notices()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    if argv[0] not in COMMANDS:
        sys.exit(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}\n{usage()}")
    return COMMANDS[argv[0]](argv[1:])


def entry_point() -> None:
    """The ``spectral-ssl`` console script: runs :func:`main`, exit status 0 on success."""
    main()

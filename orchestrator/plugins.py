"""The dev tools, reached only through entry points (group `klein.devtools`), never imported.

`klein endpoint`, `klein comfy-standin` and the local endpoint `klein serve` runs when no RunPod
is configured live in the `devtools` package, installed with the `devtools` extra. Without it,
each says in one sentence how to get it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from orchestrator.errors import ConfigError

GROUP = "klein.devtools"
INSTALL = "install klein-i2i[devtools]"
# The subcommands the dev tools add; without them each is still listed, saying how to get it.
COMMANDS = {
    "endpoint": "the local RunPod endpoint",
    "comfy-standin": "the ComfyUI stand-in",
}

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def load(name: str, missing: str, group: str = GROUP) -> Any:
    """The object entry point `name` names; a ConfigError saying `missing` when it is absent."""
    found = entry_points(group=group, name=name)
    if not found:
        raise ConfigError(missing)
    try:
        return next(iter(found)).load()
    except ImportError as exc:  # installed without the extras the dev tools need
        raise ConfigError(missing) from exc


def commands(group: str = GROUP) -> Register | None:
    """The dev tools' `register(subparsers)`, or None when they are not installed."""
    try:
        register: Register = load("commands", "", group)
    except ConfigError:
        return None
    return register


def add_missing_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """List the dev tools' subcommands anyway; each fails saying how to install them."""
    for name, what in COMMANDS.items():
        sentence = f"{what} is a development tool: {INSTALL}"
        # No option prefix: every word, --help included, is taken and the sentence answers it.
        command = subparsers.add_parser(name, help=sentence, prefix_chars="\0", add_help=False)
        command.add_argument("ignored", nargs=argparse.REMAINDER)
        command.set_defaults(run=_missing(sentence))


def _missing(sentence: str) -> Callable[[argparse.Namespace, Any], int]:
    def run(args: argparse.Namespace, settings: Any) -> int:
        raise ConfigError(sentence)

    return run

"""``bidder``: the command line. Each sub-command lives in ``bidder/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Starting fast matters (a monitor may call ``bidder status`` every minute), so this module imports
only the standard library, and a command module imports its heavy dependencies (SQLAlchemy,
numpy, the bot) inside ``run``. When the command line names a command, only that module is
imported; ``bidder``, ``--help`` and ``--version`` alone import them all, for the command list.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bidder import __version__

COMMANDS: dict[str, str] = {
    "run": "bidder.commands.run",
    "status": "bidder.commands.status",
    "cancel-all": "bidder.commands.cancel_all",
    "record": "bidder.commands.record",
    "import": "bidder.commands.import_",
    "backtest": "bidder.commands.backtest",
    "sim": "bidder.commands.sim",
    "alerts": "bidder.commands.alerts",
    "optimize": "bidder.commands.optimize",
    "db": "bidder.commands.db",
}

GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--log-level",), {"default": "INFO", "choices": ["DEBUG", "INFO", "WARNING", "ERROR"],
                        "help": "log verbosity (default: INFO)"}),
    (("--log-file",), {"type": Path, "default": None, "metavar": "PATH",
                       "help": "also log to PATH, rotated at 10 MB (5 old files kept)"}),
    (("--log-format",), {"default": "text", "choices": ["text", "json"],
                         "help": "text, or one JSON object per line for log shippers (default: text)"}),
]
"""Options every command takes, before or after the command's name (``bidder --log-level DEBUG
run`` = ``bidder run --log-level DEBUG``): one entry each, ``(flags, add_argument keywords)``."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not for None, False or lists)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """In a command's parser the global options default to SUPPRESS, so a value given before the
    command is kept unless it is given again after it."""
    for flags, kwargs in GLOBAL_OPTIONS:
        if in_command:
            kwargs = {**kwargs, "default": argparse.SUPPRESS}
        parser.add_argument(*flags, **kwargs)


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is one), if any."""
    takes_value = {flag for flags, kwargs in GLOBAL_OPTIONS for flag in flags
                   if kwargs.get("action") in (None, "store", "append")}
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in COMMANDS:
            return word
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser. When ``argv`` names a command, only that command's module is imported and
    asked for its arguments; otherwise (``bidder --help``, ``--version``) every command module
    is imported for its ``HELP`` only: ``add_arguments`` may import what it needs."""
    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bidder",
        allow_abbrev=False,  # "--log DEBUG" would hide the command from _chosen_command
        description="Rent GPUs on Clore.ai's spot market and GigaSPOT auction at the lowest price "
        "the market allows, record the market, and backtest strategies on it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, in_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if chosen is not None and name != chosen:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=HelpFormatter)
        if name == chosen:
            module.add_arguments(p)
            _add_global_options(p, in_command=True)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module: ModuleType = args._module
    from bidder.config_file import ConfigError  # light: no pydantic for a command that needs none

    try:
        return int(module.run(args) or 0)
    except ConfigError as err:
        print(f"bidder {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``bidder``: the command line. Each sub-command lives in ``bidder/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bidder import __version__
from bidder.config import ConfigError

COMMANDS: dict[str, str] = {
    "run": "bidder.commands.run",
    "status": "bidder.commands.status",
    "cancel-all": "bidder.commands.cancel_all",
    "record": "bidder.commands.record",
    "import": "bidder.commands.import_",
    "backtest": "bidder.commands.backtest",
    "sim": "bidder.commands.sim",
    "alerts": "bidder.commands.alerts",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not for None, False or lists)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidder",
        description="Rent GPUs on Clore.ai's spot market and GigaSPOT auction at the lowest price "
        "the market allows, record the market, and backtest strategies on it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity (default: INFO)")
    parser.add_argument("--log-file", type=Path, default=None, metavar="PATH",
                        help="also log to PATH, rotated at 10 MB (5 old files kept)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text, or one JSON object per line for log shippers (default: text)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except ConfigError as err:
        print(f"bidder {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

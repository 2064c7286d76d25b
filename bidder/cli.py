"""``bidder``: the command line. Each sub-command lives in ``bidder/commands/<name>.py`` and
exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    "optimize": "bidder.commands.optimize",
    "db": "bidder.commands.db",
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

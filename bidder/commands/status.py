"""``bidder status``: what the bot holds and spends, and whether it is alive (database only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = ("Show what the bot holds against its targets, its orders, spend against the budget, market "
        "data ages, API use and recent problems; exit 1 when its heartbeat is stale. Reads only "
        "the database, so it works while the bot runs.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="config file, only to find the database: its data_dir and [storage] "
                        "are read, the rest is not checked (default: built-in defaults)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="the dry run's database")
    mode.add_argument("--sim", action="store_true", help="the simulation's database (bidder run --sim)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    # light on purpose (a monitor calls this every minute): the database through the DB-API
    # driver, the config file through tomllib; no SQLAlchemy, pydantic or numpy
    from bidder.clock import SystemClock
    from bidder.config_file import Mode, storage_url_of_file
    from bidder.status import collect, render, to_json
    from storage.errors import StorageError
    from storage.reader import open_reader

    mode: Mode = "sim" if args.sim else "dry-run" if args.dry_run else "live"
    url = storage_url_of_file(args.config, mode)
    try:
        with open_reader(url) as reader:
            status = collect(reader, url, SystemClock())
    except StorageError as err:
        print(f"bidder status: {err}", file=sys.stderr)
        return 2
    print(to_json(status) if args.json else render(status))
    return status.exit_code

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
                        help="config file, only to find the database (default: built-in defaults)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="the dry run's database")
    mode.add_argument("--sim", action="store_true", help="the simulation's database (bidder run --sim)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from bidder.clock import SystemClock
    from bidder.config import Config, Mode, load_config
    from bidder.status import collect, render, to_json
    from storage.db import open_database
    from storage.errors import StorageError

    config = load_config(args.config) if args.config is not None else Config()
    mode: Mode = "sim" if args.sim else "dry-run" if args.dry_run else "live"
    url = config.storage_url(mode)
    try:
        database = open_database(url, writer=False)
    except StorageError as err:
        print(f"bidder status: {err}", file=sys.stderr)
        return 2
    with database, database.sessions() as session:
        status = collect(session, url, SystemClock())
    print(to_json(status) if args.json else render(status))
    return status.exit_code

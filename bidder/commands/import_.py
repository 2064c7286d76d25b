"""``bidder import``: record saved GigaSPOT snapshot files into the database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bidder.commands import usd_per_clore
from bidder.logs import log_options

HELP = ("Record saved GigaSPOT snapshot files (the CDN's *_<unix time>.json) into the database, "
        "oldest first; already recorded ones are skipped.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file (default: built-in defaults; the database is "
                             "[storage] url, else bidder.db in the data directory)")
    parser.add_argument("--clore-usd", type=usd_per_clore, default=None, metavar="USD",
                        help="USD per CLORE to record with the snapshots (CDN files carry no "
                             "rate; a backtest under host_profit or with a USD cap or budget "
                             "needs one); saved get_gigaspot replies among the files give theirs")
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR",
                        help="snapshot files, or folders whose *.json files are imported; "
                             "saved get_gigaspot replies (JSON with v1_snapshot_url) give the "
                             "snapshots from theirs on their clore_price, creation fees and user id")


def run(args: argparse.Namespace) -> int:
    from bidder.config import Config, load_config
    from bidder.importer import (
        ImportInputError,
        SnapshotRates,
        import_files,
        import_snapshots,
        in_time_order,
        split_replies,
    )
    from bidder.logs import setup_logging
    from storage.db import open_database
    from storage.errors import StorageError
    from storage.gigaspot_ingest import SnapshotIngester

    config = load_config(args.config) if args.config is not None else Config()
    key = config.api.resolved_key()
    setup_logging(args.log_level, [key.get_secret_value()] if key else [], **log_options(args))
    try:
        snapshots, replies = split_replies(import_files(args.paths))
    except ImportInputError as err:
        print(f"bidder import: {err}", file=sys.stderr)
        return 2
    if not snapshots:
        print("bidder import: no snapshot files among " + ", ".join(map(str, args.paths)) +
              " (only get_gigaspot replies)", file=sys.stderr)
        return 2
    try:
        database = open_database(config.storage_url(), writer=True)
    except StorageError as err:
        print(f"bidder import: {err}", file=sys.stderr)
        return 2
    imported = skipped = 0
    failed: list[Path] = []
    rates = SnapshotRates(replies, args.clore_usd)
    with database:
        ingester = SnapshotIngester(database.sessions)
        for outcome in import_snapshots(in_time_order(snapshots), ingester, rates):
            result = outcome.result
            if result is None:
                failed.append(outcome.path)
            elif result.duplicate:
                skipped += 1
                print(f"skipped  {outcome.path}: already recorded")
            else:
                imported += 1
                print(f"imported {outcome.path}: {result.machines} machines (new versions: "
                      f"{result.new_facts} facts, {result.new_states} states, "
                      f"{result.new_bids} bids)")
    print(f"{imported} imported, {skipped} skipped (already recorded), {len(failed)} failed")
    if imported and not replies and args.clore_usd is None:
        print("bidder import: no CLORE rate recorded with these snapshots (CDN files carry "
              "none): backtests under host_profit or with USD caps or budgets need one; import "
              "with --clore-usd, or give it to bidder backtest", file=sys.stderr)
    if failed:
        print("failed: " + ", ".join(str(p) for p in failed))
        return 2
    return 0


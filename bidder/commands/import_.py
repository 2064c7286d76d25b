"""``bidder import``: record saved GigaSPOT snapshot files into the database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bidder.config import Config, load_config
from bidder.importer import import_snapshots, snapshot_files
from bidder.logs import log_options, setup_logging
from storage.db import open_database
from storage.errors import StorageError
from storage.gigaspot_ingest import SnapshotIngester

HELP = ("Record saved GigaSPOT snapshot files (the CDN's *_<unix time>.json) into the database, "
        "oldest first; already recorded ones are skipped.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file (default: built-in defaults; the database is "
                             "[storage] url, else bidder.db in the data directory)")
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR",
                        help="snapshot files, or folders whose *.json files are imported")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config is not None else Config()
    key = config.api.resolved_key()
    setup_logging(args.log_level, [key.get_secret_value()] if key else [], **log_options(args))
    try:
        database = open_database(config.storage_url(), writer=True)
    except StorageError as err:
        print(f"bidder import: {err}", file=sys.stderr)
        return 2
    imported = skipped = 0
    failed: list[Path] = []
    with database:
        ingester = SnapshotIngester(database.sessions)
        for outcome in import_snapshots(snapshot_files(args.paths), ingester):
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
    if failed:
        print("failed: " + ", ".join(str(p) for p in failed))
        return 1
    return 0

"""``bidder db``: database chores. ``bidder db copy --from URL --to URL`` moves a recorder/bot
database to another (SQLite to PostgreSQL for a user who outgrows one file, or back);
``bidder db prune --before T`` removes the market history recorded before T (``storage.prune``),
so a database recorded around the clock does not grow for ever."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.prune import PrunePlan, PruneResult

HELP = ("Database chores: copy a recorder/bot database to another (e.g. SQLite to PostgreSQL), "
        "prune old market history.")
PRUNE_BUSY_TIMEOUT = 60.0
"""Seconds the prune waits for the write lock (SQLite): longer than the bot's writers, which
should get it first."""
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    copy = sub.add_parser("copy", help="copy every table of a database into another, then check "
                                       "the row counts",
                          description="Copy every recorded snapshot, poll, listing and the "
                                      "bot's runs, orders and journal from one database into "
                                      "another (made or brought to this program's schema), in "
                                      "one transaction; then compare each table's row count.")
    copy.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the database to copy (it is only read)")
    copy.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="the database to copy into: new or empty")
    copy.add_argument("--replace", action="store_true",
                      help="empty the target's tables first if it holds data (its data is lost)")
    prune = sub.add_parser(
        "prune", help="remove the market history recorded before a time (the bot's orders, "
                      "journal and log are kept)",
        description="Remove the GigaSPOT snapshots, spot polls and marketplace listings recorded "
                    "before --before, keeping all the market views of that time on the same "
                    "(the newest snapshot and the listing in effect at T always stay, and so do "
                    "the spot polls of the day before T, which the spot view looks back over). "
                    "The bot's runs, orders, journal, alerts and log are never touched. Safe "
                    "while the bot records: small transactions, each leaving a usable database.")
    prune.add_argument("--before", default=None, metavar="T",
                       help="remove what was recorded before T: ISO 8601 (UTC unless it says "
                            "otherwise), UNIX seconds, or an age such as 30d or 12h (s, m, h, d, "
                            "w) before now")
    prune.add_argument("--db", default=None, metavar="PATH|URL",
                       help="the database: a SQLite file or a database URL (default: the "
                            "config's [storage] url, else bidder.db in the data directory)")
    prune.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="config file, only to find the database: its data_dir and [storage]")
    prune.add_argument("--dry-run", action="store_true",
                       help="only say what would be removed; change nothing")
    prune.add_argument("--vacuum", action="store_true",
                       help="then give the space back: SQLite VACUUM (rewrites the file: needs "
                            "free disk space for a copy, and holds the write lock until done, "
                            "which the bot's writes wait for 10 s at most: stop the bot first "
                            "for a large file), PostgreSQL VACUUM (ANALYZE) of the pruned tables")


def run(args: argparse.Namespace) -> int:
    from bidder.commands.backtest import UsageError
    from storage.errors import StorageError

    try:
        return _prune(args) if args.db_command == "prune" else _copy(args)
    except (StorageError, UsageError) as err:
        print(f"bidder db {args.db_command}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2


def _copy(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import engine_url, make_engine, open_database, shown_url, sqlite_path
    from storage.errors import StorageError
    from storage.schema import upgrade
    from storage.transfer import SEEDED, copy_tables, empty_target, row_counts

    for option, url in (("--from", args.source), ("--to", args.target)):
        try:
            engine_url(url)
        except StorageError as err:
            raise StorageError(f"{option} {err}") from None
    if _same(args.source, args.target, sqlite_path):
        raise StorageError(f"--from and --to are the same database ({shown_url(args.source)})")
    source = open_database(args.source, writer=False)
    try:
        try:
            engine = make_engine(args.target, writer=True)
            with engine.connect() as connection:
                held = {k: v for k, v in row_counts(connection).items() if v and k not in SEEDED}
        except (OSError, SQLAlchemyError, ImportError, ValueError) as err:
            raise StorageError(f"cannot open the database {shown_url(args.target)}: "
                               f"{str(err).splitlines()[0]}") from None
        try:
            if held and not args.replace:
                raise StorageError(
                    f"the target {shown_url(args.target)} already holds data ({sum(held.values()):,} "
                    f"rows in {len(held)} tables, e.g. {next(iter(held))}); give --replace to "
                    "empty it first, or copy into a new database")
            try:
                upgrade(engine)
                with source.engine.connect() as reader, engine.begin() as writer:
                    if held:
                        empty_target(writer)
                    result = copy_tables(reader, writer)
            except SQLAlchemyError as err:
                raise StorageError(f"the copy into {shown_url(args.target)} failed, nothing was "
                                   f"kept: {str(err).splitlines()[0]}") from None
        finally:
            engine.dispose()
    finally:
        source.close()
    tables = sum(1 for n in result.rows.values() if n)
    print(f"bidder db copy: copied {result.total:,} rows in {tables} tables from "
          f"{shown_url(args.source)} to {shown_url(args.target)}; row counts match")
    for name, n in result.rows.items():
        if n:
            print(f"  {name:<24} {n:>12,}")
    return 0


def _same(a: str, b: str, sqlite_path) -> bool:  # type: ignore[no-untyped-def]
    pa, pb = sqlite_path(a), sqlite_path(b)
    if pa is not None and pb is not None:
        return pa.expanduser().resolve() == pb.expanduser().resolve()
    return a == b


def cut_time(text: str | None, now: float) -> float:
    """``--before``: an age before ``now`` (``30d``, ``12h``, ``90m``, ``2w``), else a time as
    ``bidder backtest --from`` takes it (ISO 8601, UNIX seconds)."""
    from bidder.commands.backtest import UsageError, parse_time

    if text is None:
        raise UsageError("give --before T: the history recorded before T is removed (ISO 8601, "
                         "UNIX seconds, or an age such as 30d)")
    age = _AGE.match(text)
    if age is not None:
        return now - float(age.group(1)) * _UNIT[age.group(2)]
    try:
        when = parse_time(text, "--before")
    except UsageError as err:
        raise UsageError(f"{err}, or an age such as 30d or 12h") from None
    assert when is not None
    return when


def _prune(args: argparse.Namespace) -> int:
    import time

    from bidder.commands import database_url
    from bidder.config_file import storage_url_of_file
    from bidder.logs import log_options, setup_logging
    from storage.db import open_database, shown_url
    from storage.prune import PRUNED_TABLES, plan_prune, prune
    from storage.vacuum import database_size, vacuum

    before = cut_time(args.before, time.time())
    url = database_url(args.db) if args.db is not None else storage_url_of_file(args.config)
    setup_logging(args.log_level, **log_options(args))
    # read as a reader first: a missing SQLite file is refused (not created), and so is a
    # database whose schema is not this program's (no migration from a chore)
    with open_database(url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, before)
    shown = shown_url(url)
    if args.dry_run:
        print(_describe(plan, None, shown))
        return 0
    if plan.empty and not args.vacuum:
        print(_describe(plan, None, shown))
        return 0
    with open_database(url, writer=True, busy_timeout=PRUNE_BUSY_TIMEOUT) as db:
        size = database_size(db.engine)
        result = None if plan.empty else prune(db.engine, plan)
        print(_describe(plan, result, shown))
        if args.vacuum:
            vacuum(db.engine, PRUNED_TABLES)
            after = database_size(db.engine)
            print(f"  size: {_size(size)} before, {_size(after)} after "
                  f"{'VACUUM' if db.engine.dialect.name == 'sqlite' else 'VACUUM (ANALYZE)'}")
    return 0


def _describe(plan: PrunePlan, result: PruneResult | None, url: str) -> str:
    """The summary: per market what goes and where its history now starts, rows per table."""
    from bidder.status import fmt_utc
    from storage.prune import SPOT_LOOKBACK

    cut = plan.cut
    when = fmt_utc(cut.before)
    if plan.empty:
        return (f"bidder db prune: nothing recorded before {when} is left to remove in {url}; "
                "nothing changed")
    done = result is not None
    rows = result.rows if result is not None else plan.rows
    first = result.first_kept if result is not None else plan.first_kept
    verb = "removed" if done else "would remove"
    lines = [f"bidder db prune: {verb} the market history recorded before {when}",
             f"  in {url}{'' if done else ' (dry run: nothing changed)'}; the bot's runs, "
             "orders, journal and log are kept"]
    newest = " (the newest: always kept)" \
        if cut.snapshot_time is not None and cut.snapshot_time < cut.before else ""
    lines.append(f"  GigaSPOT {rows['gigaspot_snapshot']:>9,} snapshots; "
                 f"{_from(first['gigaspot'])}{newest}")
    spot = "the cut" if cut.spot_before + SPOT_LOOKBACK >= cut.before else "the newest poll"
    lines.append(f"  spot     {rows['spot_poll']:>9,} polls; {_from(first['spot'])} (the day "
                 f"before {spot} stays: the spot view looks back a day)")
    in_effect = " (the one in effect at the cut)" \
        if cut.listing_time is not None and cut.listing_time <= cut.before else ""
    lines.append(f"  listings {rows['marketplace_listing']:>9,} listings; "
                 f"{_from(first['listings'])}{in_effect}")
    lines.append(f"  rows {'removed' if done else 'to remove'} per table:")
    lines += [f"    {name:<26} {n:>12,}" for name, n in rows.items() if n]
    moved = result.moved if result is not None else plan.moved
    if moved:
        lines.append(f"  {moved:,} listing entries {'now start' if done else 'would start'} at "
                     "the first kept listing (their older versions go)")
    return "\n".join(lines)


def _from(first: float | None) -> str:
    from bidder.status import fmt_utc

    return "nothing recorded" if first is None else f"kept from {fmt_utc(first)}"




def _size(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e6:,.1f} MB"

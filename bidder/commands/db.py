"""``bidder db``: database chores. ``bidder db copy --from URL --to URL`` moves a recorder/bot
database to another (SQLite to PostgreSQL for a user who outgrows one file, or back)."""

from __future__ import annotations

import argparse
import sys

HELP = "Database chores: copy a recorder/bot database to another (e.g. SQLite to PostgreSQL)."


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


def run(args: argparse.Namespace) -> int:
    from storage.errors import StorageError

    try:
        return _copy(args)
    except StorageError as err:
        print(f"bidder db copy: {err}", file=sys.stderr)
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

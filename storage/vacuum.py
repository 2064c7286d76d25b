"""Giving the space of deleted rows back, and the database's size (``bidder db prune --vacuum``).

Deleting rows does not shrink a SQLite file: its free pages are reused by later writes, so the
file stops growing but keeps its size. ``VACUUM`` rewrites the file without them. It must run
outside any transaction, needs free disk space for a copy of the database, and holds the write
lock until it is done, so the bot's writes wait for it (and fail after their ``busy_timeout``).

On PostgreSQL ``VACUUM (ANALYZE)`` (also outside a transaction) marks the dead rows' space
reusable and refreshes the planner's statistics, without locking writers out; the files keep
their size (only ``VACUUM FULL``, which locks the tables, would give it back to the system).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, Table, text
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import StorageError


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite engine (None: another backend, or an in-memory database)."""
    if engine.dialect.name != "sqlite" or not engine.url.database or \
            engine.url.database == ":memory:":
        return None
    return Path(engine.url.database)


def database_size(engine: Engine) -> int | None:
    """Bytes the database takes: a SQLite file with its write-ahead log, PostgreSQL's
    ``pg_database_size``; None when it cannot be had."""
    path = sqlite_file(engine)
    if path is not None:
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal"))
                   if p.exists())
    if engine.dialect.name == "postgresql":
        try:
            with engine.connect() as connection:
                size = connection.scalar(text("SELECT pg_database_size(current_database())"))
        except SQLAlchemyError:
            return None
        return None if size is None else int(size)
    return None


def vacuum(engine: Engine, tables: Iterable[Table]) -> None:
    """SQLite: ``VACUUM`` the whole file, then checkpoint the write-ahead log into it (so the file
    is smaller now, not at the next checkpoint). PostgreSQL: ``VACUUM (ANALYZE)`` each of
    ``tables``. Raises ``StorageError`` when that fails (nothing is lost: only the space stays)."""
    try:
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                # the driver's own connection: the engine's "begin" hook would open a
                # transaction, and VACUUM cannot run in one
                raw = connection.connection.dbapi_connection
                assert raw is not None
                raw.execute("VACUUM")
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        elif engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                for table in tables:
                    connection.execute(text(f'VACUUM (ANALYZE) "{table.name}"'))
    except SQLAlchemyError as err:
        raise StorageError(f"VACUUM failed (the pruned rows are gone; only their space was not "
                           f"given back): {str(err).splitlines()[0]}") from None
    except sqlite3.Error as err:  # the driver's own, raised outside SQLAlchemy
        raise StorageError(f"VACUUM failed (the pruned rows are gone; only their space was not "
                           f"given back): {err}") from None

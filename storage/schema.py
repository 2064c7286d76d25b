"""Schema versions: upgrade a database in place, or refuse one this program cannot read.

The version is the highest row of ``schema_version`` (0 for an empty database). Writers call
``upgrade``: every pending migration runs in its own transaction and is recorded in the same
transaction, so a failed upgrade leaves the database at the last version that completed. Two
writers upgrading at once apply each migration once: the second waits, then finds it done. Readers
call ``require_current``: they never migrate (``bidder status`` must not change a database the bot
is writing) and get a message saying which program has to open it first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, func, inspect, insert, select

from storage.errors import SchemaVersionError, StorageError, schema_too_new, schema_too_old
from storage.locks import SCHEMA_MIGRATION, serialise
from storage.migrations import MIGRATIONS, Migration
from storage.models import SchemaVersion

log = logging.getLogger(__name__)

VERSION_TABLE = SchemaVersion.__table__
SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this program reads and writes."""


def schema_version(connection: Connection) -> int:
    """The database's schema version; 0 when it has no ``schema_version`` table or no row in it."""
    if not inspect(connection).has_table(VERSION_TABLE.name):
        return 0
    return int(connection.scalar(select(func.max(VERSION_TABLE.c.version))) or 0)


def _describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _newer_error(engine: Engine, found: int, known: int) -> SchemaVersionError:
    return schema_too_new(_describe(engine), found, known)


def _check_sequence(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")


def upgrade(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every pending migration; return the schema version reached.

    Refuses (``SchemaVersionError``) a database from a newer program and (``StorageError``) a
    database with tables of its own but no ``schema_version``: that is not our database.
    """
    _check_sequence(migrations)
    latest = len(migrations)
    for migration in migrations:
        with engine.begin() as connection:
            # read inside the write-locked transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the
            # advisory lock): another writer may have upgraded already, and one doing so now
            # finishes its migration before this one reads
            serialise(connection, SCHEMA_MIGRATION)
            current = schema_version(connection)
            if current > latest:
                raise _newer_error(engine, current, latest)
            if current >= migration.version:
                continue
            if current == 0:
                foreign = inspect(connection).get_table_names()
                if foreign:
                    raise StorageError(
                        f"database {_describe(engine)} is not a clore-bidder database (it has tables "
                        f"{sorted(foreign)} but no schema_version); use another database")
                VERSION_TABLE.create(connection)
            log.info("database %s: schema version %d -> %d (%s)", _describe(engine), current,
                     migration.version, migration.description)
            migration.apply(connection)
            connection.execute(insert(VERSION_TABLE).values(
                version=migration.version, description=migration.description))
    with engine.connect() as connection:
        current = schema_version(connection)
    if current > latest:
        raise _newer_error(engine, current, latest)
    return current


def require_current(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Check, without changing anything, that the database has exactly this program's schema."""
    _check_sequence(migrations)
    latest = len(migrations)
    with engine.connect() as connection:
        current = schema_version(connection)
    if current > latest:
        raise _newer_error(engine, current, latest)
    if current < latest:
        raise schema_too_old(_describe(engine), current, latest)
    return current

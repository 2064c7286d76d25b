"""Copying a whole database to another (``bidder db copy``): SQLite to PostgreSQL and back.

Both databases have this program's schema (the source is read at its current version, the target
is brought to it), so every table is copied as it is, parents before children, in batches, inside
one transaction on the target: a copy that fails half-way leaves the target as empty as it was.
The source is read in one snapshot (SQLite: one read transaction; PostgreSQL: REPEATABLE READ), so
a database the bot is writing is copied as it was when the copy began.
Afterwards every table's row count is compared, and PostgreSQL's id sequences are moved past the
copied ids (inserted ids do not advance them; the next insert would collide).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Table, delete, func, insert, inspect, select, text

from storage.errors import StorageError
from storage.models import Base, SchemaVersion

BATCH = 5_000
"""Rows per insert batch: big enough to amortise round trips, small enough for memory."""


SEEDED = frozenset({"bot_lease"})
"""Tables whose rows a migration makes (the one-bot lease row): every database at this version
has them, so they are not data to copy or to count as held; the copy's lease starts free (a lease
copied from a running bot's database would keep a bot off the copy)."""


def data_tables() -> list[Table]:
    """Our tables, parents first (``schema_version`` is the target's own)."""
    return [t for t in Base.metadata.sorted_tables if t.name != SchemaVersion.__tablename__]


def row_counts(connection: Connection) -> dict[str, int]:
    """Rows in each of our tables that exists in this database."""
    present = set(inspect(connection).get_table_names())
    return {t.name: int(connection.scalar(select(func.count()).select_from(t)) or 0)
            for t in data_tables() if t.name in present}


def reset_sequences(connection: Connection) -> None:
    """On PostgreSQL, move each table's id sequence past its highest id (rows inserted with their
    ids leave it behind). Nothing to do on SQLite, whose rowids follow the table."""
    if connection.dialect.name != "postgresql":
        return
    present = set(inspect(connection).get_table_names())
    for table in data_tables():
        column = table.autoincrement_column
        if column is None or table.name not in present:
            continue
        sequence = connection.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                     {"t": table.name, "c": column.name})
        if sequence is None:
            continue
        highest = connection.scalar(select(func.max(column)))
        connection.execute(text("SELECT setval(:s, :v, :called)"),
                           {"s": sequence, "v": highest or 1, "called": highest is not None})


@dataclass(frozen=True, slots=True)
class CopyResult:
    rows: dict[str, int]
    """Rows copied per table (equal in source and target: checked)."""

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def empty_target(connection: Connection) -> None:
    """Delete every row of our tables, children first (``--replace``); the ``SEEDED`` rows stay."""
    present = set(inspect(connection).get_table_names())
    for table in reversed(data_tables()):
        if table.name in present and table.name not in SEEDED:
            connection.execute(delete(table))


def _one_snapshot(source: Connection) -> None:
    """Make every read of ``source`` see the same moment. PostgreSQL's READ COMMITTED would show
    each table as of its own SELECT: a row written meanwhile to a table already copied breaks the
    count check, a child row whose parent was copied before it breaks a foreign key. A SQLite
    connection's transaction is one snapshot already."""
    if source.dialect.name != "postgresql":
        return
    if source.in_transaction():
        raise ValueError("copy_tables needs a source connection with no transaction begun "
                         "(it reads the source in one REPEATABLE READ snapshot)")
    source.execution_options(isolation_level="REPEATABLE READ")


def copy_tables(source: Connection, target: Connection,
                progress: Callable[[str, int], None] | None = None) -> CopyResult:
    """Copy every row of every table from ``source`` into ``target`` (both at the same schema
    version; the target's tables empty), then check the counts. ``source`` must have no
    transaction begun: its reads, the counts too, are made one snapshot here."""
    _one_snapshot(source)
    for table in data_tables():
        if table.name in SEEDED:
            continue
        copied = 0
        result = source.execution_options(stream_results=True, yield_per=BATCH).execute(
            select(table).order_by(*table.primary_key.columns))
        for batch in result.mappings().partitions(BATCH):
            target.execute(insert(table), [dict(row) for row in batch])
            copied += len(batch)
            if progress is not None:
                progress(table.name, copied)
    reset_sequences(target)
    before, after = row_counts(source), row_counts(target)
    if before != after:
        differ = {name: (before.get(name), after.get(name)) for name in before
                  if before.get(name) != after.get(name)}
        raise StorageError(f"the copy does not match its source (rows source/target: {differ}); "
                           "nothing was kept")
    return CopyResult(after)

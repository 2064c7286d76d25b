"""PostgreSQL advisory locks that serialise this program's writers of one database.

On SQLite every writer transaction starts with ``BEGIN IMMEDIATE`` (``storage.db``), so writers
already queue for the database's one write lock. PostgreSQL runs them side by side at READ
COMMITTED: two ingests that both read the newest snapshot and its open rows, then both close and
open versions, leave two open versions of a row. Such a writer takes its key here first in its
transaction; the second one waits until the first commits, and its next statement sees that commit.

The keys live in one place so they never collide (``bidder optimize``'s ``STUDY_LOCK``, 0x0C10BE,
is the other key in use; a test checks they differ).
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

GIGASPOT_INGEST = 0x0C10BE01
"""Held while a GigaSPOT snapshot is recorded (``storage.gigaspot_ingest``)."""
MARKETPLACE_INGEST = 0x0C10BE02
"""Held while a ``marketplace`` listing is recorded (``storage.spot_record``)."""
SCHEMA_MIGRATION = 0x0C10BE03
"""Held while one schema migration is applied (``storage.schema.upgrade``)."""

KEYS = (GIGASPOT_INGEST, MARKETPLACE_INGEST, SCHEMA_MIGRATION)


def serialise(bind: Connection | Session, key: int) -> None:
    """On PostgreSQL, wait for ``key`` and hold it until the current transaction ends (commit or
    rollback release it). Call it before the transaction's first read of what it will change: at
    READ COMMITTED each later statement then sees the writes of the writer it waited for. Nothing to
    do on SQLite."""
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    if dialect.name == "postgresql":
        bind.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

"""SQLite's own locking: WAL, busy timeout, write lock taken at BEGIN, read-only readers. (A reader
seeing the last commit mid-write and refusing writes, on both backends: test_concurrency.py.)"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import exc, insert, text

from storage.db import open_database
from storage.models import Currency


@pytest.fixture
def db_url(sqlite_url):
    """SQLite's own locking and pragmas: these tests run on SQLite only (both backends:
    ``test_concurrency.py``)."""
    return sqlite_url


def pragmas(sessions, *names):
    with sessions() as session:
        return [session.execute(text(f"PRAGMA {name}")).scalar() for name in names]


def test_connection_settings(database, db_url):
    assert pragmas(database.sessions, "journal_mode", "foreign_keys", "synchronous",
                   "busy_timeout", "query_only") == ["wal", 1, 1, 10_000, 0]
    with open_database(db_url, writer=False, busy_timeout=2.5) as reader:
        assert pragmas(reader.sessions, "journal_mode", "busy_timeout", "query_only") == \
            ["wal", 2_500, 1]


def test_writers_take_the_lock_when_they_begin(database, db_url):
    with open_database(db_url, writer=True, busy_timeout=0) as impatient:
        with database.sessions.begin() as holder:
            holder.execute(insert(Currency).values(name="bitcoin"))
            with pytest.raises(exc.OperationalError, match="database is locked"):
                with impatient.sessions.begin() as session:
                    session.execute(text("SELECT 1"))  # a read, yet it queues for the lock


def test_a_second_writer_waits_for_the_first(database, db_url):
    done = []
    with open_database(db_url, writer=True) as other:

        def second_writer():
            with other.sessions.begin() as session:
                session.execute(insert(Currency).values(name="USD-Blockchain"))
            done.append(True)

        with database.sessions.begin() as holder:
            holder.execute(insert(Currency).values(name="bitcoin"))
            thread = threading.Thread(target=second_writer)
            thread.start()
        thread.join(timeout=30)
    assert done == [True]
    with database.sessions() as session:
        assert sorted(session.scalars(text("SELECT name FROM currency"))) == \
            ["USD-Blockchain", "bitcoin"]

"""One writer, many readers: WAL, busy timeout, write lock taken at BEGIN, read-only readers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import exc, insert, text

import storage.gigaspot_ingest as gigaspot_ingest
from storage.db import open_database
from storage.market_views import gigaspot_frame
from storage.models import Currency

T0 = 1735176176


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


def test_a_reader_cannot_write(database, db_url):
    with open_database(db_url, writer=False) as reader, reader.sessions() as session:
        with pytest.raises(exc.OperationalError, match="readonly database"):
            session.execute(insert(Currency).values(name="bitcoin"))


def test_a_reader_reads_while_a_snapshot_is_being_written(monkeypatch, database, db_url, record,
                                                          doc_snapshot, changed):
    record(doc_snapshot, 0)
    seen_during_write = []
    real = gigaspot_ingest.executemany

    def read_meanwhile(connection, statement, names, rows):
        real(connection, statement, names, rows)
        if not seen_during_write:  # the writer holds the write lock and has written rows
            with open_database(db_url, writer=False, busy_timeout=0) as reader, \
                    reader.sessions() as session:
                seen_during_write.append(gigaspot_frame(session))

    monkeypatch.setattr(gigaspot_ingest, "executemany", read_meanwhile)
    record(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3), 1)

    during = seen_during_write[0]
    assert during.time == T0 and during.bid_price.tolist() == [0.2]  # the last commit, unblocked
    with open_database(db_url, writer=False) as reader, reader.sessions() as session:
        assert gigaspot_frame(session).bid_price.tolist() == [0.3]


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

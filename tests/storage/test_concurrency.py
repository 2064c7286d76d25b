"""One writer and its readers on both backends: a reader sees the last commit while a write is
under way, is never blocked by it, and cannot write. (SQLite's own locking: test_sqlite_concurrency.)"""

from __future__ import annotations

import pytest
from sqlalchemy import exc, insert

import storage.gigaspot_ingest as gigaspot_ingest
from storage.db import open_database
from storage.market_views import gigaspot_frame
from storage.models import Currency

T0 = 1735176176


def test_a_reader_sees_the_last_commit_while_a_snapshot_is_being_written(
        monkeypatch, database, db_url, record, doc_snapshot, changed):
    record(doc_snapshot, 0)
    seen_during_write = []
    real = gigaspot_ingest.executemany

    def read_meanwhile(connection, statement, names, rows):
        real(connection, statement, names, rows)
        if not seen_during_write:  # the writer has written rows and not committed them
            with open_database(db_url, writer=False, busy_timeout=0) as reader, \
                    reader.sessions() as session:
                seen_during_write.append(gigaspot_frame(session))

    monkeypatch.setattr(gigaspot_ingest, "executemany", read_meanwhile)
    record(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3), 1)

    during = seen_during_write[0]
    assert during.time == T0 and during.bid_price.tolist() == [0.2]  # the last commit, unblocked
    with open_database(db_url, writer=False) as reader, reader.sessions() as session:
        assert gigaspot_frame(session).bid_price.tolist() == [0.3]


def test_a_reader_cannot_write(database, db_url):
    with open_database(db_url, writer=False) as reader, reader.sessions() as session:
        with pytest.raises((exc.OperationalError, exc.InternalError),
                           match="readonly database|read-only transaction"):
            session.execute(insert(Currency).values(name="bitcoin"))

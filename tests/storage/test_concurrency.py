"""One writer and its readers on both backends: a reader sees the last commit while a write is
under way, is never blocked by it, and cannot write; a market frame is one snapshot even when an
ingest commits while it is read. (SQLite's own locking: test_sqlite_concurrency; two writers of one
PostgreSQL database: test_postgresql_writers.)"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import exc, func, insert, select

import storage.gigaspot_ingest as gigaspot_ingest
import storage.market_views as market_views
from storage.db import open_database
from storage.gigaspot_ingest import SnapshotIngester
from storage.market_views import gigaspot_frame
from storage.models import BotOrder, Currency

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


def frame_with_an_ingest_between_its_reads(monkeypatch, sessions, ingest_next,
                                           before=lambda session: None):
    """``gigaspot_frame`` read through ``sessions``, with ``ingest_next()`` committed (by another
    connection) after the frame has read the states and before it reads the facts and bids."""
    real = market_views.fetch_rows
    reads = []

    def fetch_rows(connection, statement):
        rows = real(connection, statement)
        reads.append(statement)
        if len(reads) == 1:
            ingest_next()
        return rows

    monkeypatch.setattr(market_views, "fetch_rows", fetch_rows)
    with sessions() as session:
        before(session)
        frame = gigaspot_frame(session)
    monkeypatch.setattr(market_views, "fetch_rows", real)
    assert len(reads) == 3  # states, facts, bids
    return frame


def next_snapshot(doc_snapshot, changed):
    """A new machine with a bid, 40329's bid dearer and its country new: every read changes."""
    newer = changed(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3),
                    ("40329", "cc"), "DE")
    return newer | {"50000": changed(doc_snapshot["40329"], ("bids", 0, "id"), 7)}


def assert_first_snapshot(frame):
    assert frame.time == T0 and frame.server_id.tolist() == [35083, 40329]
    assert frame.country.tolist() == ["RU", "KZ"] and frame.gpus.tolist() == [8, 1]
    assert frame.bid_start.tolist() == [0, 0, 1] and frame.bid_id.tolist() == [542567]
    assert frame.bid_price.tolist() == pytest.approx([0.2])


def test_a_frame_is_one_snapshot_when_an_ingest_commits_between_its_reads(
        monkeypatch, database, db_url, record, doc_snapshot, changed):
    record(doc_snapshot, 0)
    with open_database(db_url, writer=False) as reader:
        frame = frame_with_an_ingest_between_its_reads(
            monkeypatch, reader.sessions, lambda: record(next_snapshot(doc_snapshot, changed), 1))
        assert_first_snapshot(frame)
        with reader.sessions() as session:
            after = gigaspot_frame(session)
            assert after.server_id.tolist() == [35083, 40329, 50000]
            assert after.bid_price.tolist() == pytest.approx([0.3, 0.2])
            with pytest.raises((exc.OperationalError, exc.InternalError)):  # still a reader
                session.execute(insert(Currency).values(name="bitcoin"))


def test_the_bots_frame_on_postgresql_is_one_snapshot_when_an_ingest_commits_between_its_reads(
        monkeypatch, pg_url, doc_snapshot, changed):
    # the bot's cycle reads its frames through the writer's sessions, after other reads (on
    # SQLite the writer's BEGIN IMMEDIATE would hold the ingest off instead)
    with open_database(pg_url, writer=True) as bot, open_database(pg_url, writer=True) as recorder:
        ingester = SnapshotIngester(recorder.sessions)

        def ingest(snapshot, minute):
            when = T0 + 60 * minute
            ingester.ingest(json.dumps(snapshot).encode(), snapshot_time=when,
                            fetched_at=when + 5.0, source=f"prod_test_{when}.json")

        ingest(doc_snapshot, 0)
        frame = frame_with_an_ingest_between_its_reads(
            monkeypatch, bot.sessions, lambda: ingest(next_snapshot(doc_snapshot, changed), 1),
            before=lambda session: session.execute(select(func.count(BotOrder.id))))
        assert_first_snapshot(frame)
        with bot.sessions() as session:
            assert gigaspot_frame(session).server_id.tolist() == [35083, 40329, 50000]

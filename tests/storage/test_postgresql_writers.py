"""Two writers of one PostgreSQL database at once (two processes: here two threads, each with its
own engine). PostgreSQL runs them side by side at READ COMMITTED, where SQLite's ``BEGIN
IMMEDIATE`` would queue them; ``storage.locks`` makes them take turns.

Each test makes the race as likely as it can be: the first writer stops right after reading what
it will change and goes on only when the second has read the same (nothing serialises them) or is
waiting for a lock (they take turns). Without the locks both would diff against the same open rows.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

import storage.gigaspot_ingest as gigaspot_ingest
import storage.schema as schema
import storage.spot_record as spot_record
from bidder.api.models import MarketplaceReply
from bidder.commands.optimize import STUDY_LOCK
from storage.db import Database, make_engine, open_database
from storage.gigaspot_ingest import IngestResult, SnapshotIngester
from storage.locks import KEYS
from storage.market_views import gigaspot_frame
from storage.models import BIDS, FACTS, STATES, MarketplaceServer, SchemaVersion
from storage.schema import SCHEMA_VERSION, upgrade

T0 = 1735176176
WAIT = 30.0
"""Seconds a step may take before the test fails instead of hanging."""
WAITING_FOR_LOCK = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


class Overlap:
    """``point()``, called by both writers where they have read what they will change: the first
    to get there waits until the second gets there too, or waits for an advisory lock."""

    def __init__(self, url: str) -> None:
        self._watch: Engine = create_engine(url)
        self._guard = threading.Lock()
        self._seen: set[int] = set()
        self._armed = False
        self.first_there = threading.Event()
        self.second_there = threading.Event()
        self.second_waited_for_lock = False

    def point(self) -> None:
        with self._guard:
            if not self._armed or threading.get_ident() in self._seen:
                return  # set-up work, or not a writer's first arrival
            self._seen.add(threading.get_ident())
            first = len(self._seen) == 1
        if not first:
            self.second_there.set()
            return
        self.first_there.set()
        deadline = time.monotonic() + WAIT
        with self._watch.connect() as connection:
            while not self.second_there.wait(0.01):
                if connection.execute(WAITING_FOR_LOCK).scalar():
                    self.second_waited_for_lock = True
                    return
                connection.rollback()
                assert time.monotonic() < deadline, "the second writer neither came nor waited"

    def run(self, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
        """Run ``first``, and ``second`` once ``first`` is at the point; each one's result or
        exception."""
        results: dict[str, Any] = {}
        self._armed = True

        def call(name: str, work: Callable[[], Any]) -> None:
            try:
                results[name] = work()
            except Exception as err:  # noqa: BLE001 - handed back to the test
                results[name] = err

        threads = [threading.Thread(target=call, args=("first", first))]
        try:
            threads[0].start()
            assert self.first_there.wait(WAIT), "the first writer never got to the point"
            threads.append(threading.Thread(target=call, args=("second", second)))
            threads[1].start()
            for thread in threads:
                thread.join(WAIT)
                assert not thread.is_alive(), "a writer is stuck"
        finally:
            self._watch.dispose()
        return results["first"], results["second"]


@pytest.fixture
def writers(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """Two writers (two engines, as two processes) of one new PostgreSQL database."""
    with open_database(pg_url, writer=True) as one, open_database(pg_url, writer=True) as two:
        yield one, two


def ingest(db: Database, snapshot: dict[str, Any], minute: int) -> Callable[[], IngestResult]:
    ingester = SnapshotIngester(db.sessions)
    when = T0 + 60 * minute
    raw = json.dumps(snapshot).encode()
    return lambda: ingester.ingest(raw, snapshot_time=when, fetched_at=when + 5.0,
                                   source=f"prod_test_{when}.json")


def duplicated(db: Database) -> list[tuple[Any, ...]]:
    """(table, key...) of every key with more than one open version (none: all is well)."""
    out = []
    with db.sessions() as session:
        for table, keys in ((FACTS, ("machine_id",)), (STATES, ("machine_id",)),
                            (BIDS, ("machine_id", "bid_id"))):
            columns = [table.c[k] for k in keys]
            out += [(table.name, *r) for r in session.execute(
                select(*columns).where(table.c.end_snapshot.is_(None))
                .group_by(*columns).having(func.count() > 1))]
    return out


@pytest.fixture
def overlap_at_parse(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Overlap:
    """The ingest's point: it has read the newest snapshot and the open rows, and parses."""
    overlap = Overlap(pg_url)
    real = gigaspot_ingest.parse_snapshot

    def parse_snapshot(*args: Any, **kwargs: Any) -> Any:
        overlap.point()
        return real(*args, **kwargs)

    monkeypatch.setattr(gigaspot_ingest, "parse_snapshot", parse_snapshot)
    return overlap


def test_two_processes_ingesting_newer_snapshots_at_once_leave_one_open_version_per_key(
        writers, overlap_at_parse, doc_snapshot, changed):
    one, two = writers
    new_machine = changed(doc_snapshot["40329"], ("bids", 0, "id"), 542568)
    first = changed(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3),
                    ("40329", "online"), True) | {"50000": new_machine}
    second = changed(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.4),
                     ("40329", "reliability"), 0.7) | {"50000": new_machine}
    ingest(one, doc_snapshot, 0)()

    a, b = overlap_at_parse.run(ingest(one, first, 1), ingest(two, second, 2))

    assert isinstance(a, IngestResult) and isinstance(b, IngestResult), (a, b)
    assert duplicated(one) == []
    assert overlap_at_parse.second_waited_for_lock  # the second took its turn
    assert (b.snapshot_id > a.snapshot_id, b.new_states, b.new_facts) == (True, 1, 0)
    with one.sessions() as session:
        frame = gigaspot_frame(session)
    assert frame.server_id.tolist() == [35083, 40329, 50000]
    assert frame.bid_price.tolist() == pytest.approx([0.4, 0.2])  # 40329's, then 50000's
    assert frame.online.tolist() == [True, False, False]
    assert frame.reliability[1] == pytest.approx(0.7)


def test_two_processes_ingesting_the_same_snapshot_at_once_record_it_once(
        writers, overlap_at_parse, doc_snapshot, changed):
    one, two = writers
    ingest(one, doc_snapshot, 0)()
    newer = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3)

    a, b = overlap_at_parse.run(ingest(one, newer, 1), ingest(two, newer, 1))

    assert isinstance(a, IngestResult) and isinstance(b, IngestResult), (a, b)  # no IntegrityError
    assert (a.duplicate, b.duplicate, b.snapshot_id) == (False, True, a.snapshot_id)
    assert duplicated(one) == []


def test_two_processes_recording_marketplace_listings_at_once_leave_one_open_entry(
        monkeypatch, pg_url, writers, fixture_json):
    one, two = writers
    base = fixture_json("marketplace.json")
    listings = []
    for price in (5e-7, 4e-7):
        listing = copy.deepcopy(base)
        listing["servers"][0]["price"]["spot"] = {"bitcoin": price}
        listings.append(MarketplaceReply.model_validate(listing))
    with one.sessions.begin() as session:
        spot_record.record_marketplace(session, 100.0, MarketplaceReply.model_validate(base))
    overlap = Overlap(pg_url)
    real = spot_record.diff_versions

    def diff_versions(*args: Any, **kwargs: Any) -> Any:
        overlap.point()  # the newest listing and the open entries have been read
        return real(*args, **kwargs)

    monkeypatch.setattr(spot_record, "diff_versions", diff_versions)

    def record(db: Database, at: float, reply: MarketplaceReply) -> Callable[[], Any]:
        def work() -> Any:
            with db.sessions.begin() as session:
                return spot_record.record_marketplace(session, at, reply)
        return work

    a, b = overlap.run(record(one, 200.0, listings[0]), record(two, 300.0, listings[1]))

    assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
    m = MarketplaceServer
    with one.sessions() as session:
        rows = session.execute(select(m.first_listing, m.end_listing, m.spot_floors)
                               .where(m.server_id == 6).order_by(m.first_listing)).all()
    assert [tuple(r) for r in rows] == [(1, 2, {"bitcoin": 1e-6}), (2, 3, {"bitcoin": 5e-7}),
                                        (3, None, {"bitcoin": 4e-7})]
    assert overlap.second_waited_for_lock


def test_two_processes_upgrading_a_new_database_at_once_apply_each_migration_once(
        monkeypatch, pg_url):
    overlap = Overlap(pg_url)
    real = schema.schema_version

    def schema_version(connection: Any) -> int:
        found = real(connection)
        overlap.point()  # the first migration's transaction has read the version (0)
        return found

    monkeypatch.setattr(schema, "schema_version", schema_version)
    engines = [make_engine(pg_url, writer=True) for _ in range(2)]
    try:
        a, b = overlap.run(lambda: upgrade(engines[0]), lambda: upgrade(engines[1]))
        assert (a, b) == (SCHEMA_VERSION, SCHEMA_VERSION), (a, b)
        with engines[0].connect() as connection:
            versions = connection.scalars(select(SchemaVersion.version)
                                          .order_by(SchemaVersion.version)).all()
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert overlap.second_waited_for_lock
    finally:
        for engine in engines:
            engine.dispose()


def test_the_lock_keys_differ_from_each_other_and_from_the_optimizers():
    assert len({*KEYS, STUDY_LOCK}) == len(KEYS) + 1

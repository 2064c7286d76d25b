"""Record GigaSPOT snapshots: one transaction per snapshot, interval-encoded (see ``storage.models``).

The ingester keeps the open rows (each machine's current facts and state, each live bid) in
memory, so a snapshot costs one parse, one comparison per row and writes for the changes only.
That memory is replaced only after the snapshot's transaction commits: a rejected or failed snapshot
leaves both the database and the ingester as they were. Before each snapshot the ingester checks
that the newest recorded snapshot is still the one it knows, and reloads the open rows otherwise
(another process recorded in between). Ingests of one database run one at a time: on SQLite by the
writer's ``BEGIN IMMEDIATE``, on PostgreSQL by an advisory lock (``storage.locks``) taken first in
the transaction, so two processes never both diff against the same open rows.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.bulk import executemany
from storage.gigaspot_parse import (
    Bid,
    Facts,
    ParsedSnapshot,
    SnapshotError,
    State,
    format_time,
    parse_snapshot,
)
from storage.intervals import diff_versions
from storage.locks import GIGASPOT_INGEST, serialise
from storage.models import BIDS, FACTS, STATES, Currency, GigaspotSnapshot


@dataclass(frozen=True, slots=True)
class IngestResult:
    snapshot_id: int
    snapshot_time: int
    machines: int
    new_facts: int
    """Facts versions opened (a new machine, or new hardware)."""
    new_states: int
    """State versions opened."""
    new_bids: int
    """Bid versions opened (a new bid, or a changed one)."""
    closed_states: int
    closed_bids: int
    duplicate: bool
    """The snapshot was already recorded: nothing was written."""


@dataclass(frozen=True, slots=True)
class _OpenRows:
    """The newest recorded snapshot (id, time) and every open row; replaced whole, never edited."""

    newest: tuple[int, int] | None
    facts: dict[int, tuple[int, Facts]]
    states: dict[int, tuple[int, State]]
    bids: dict[tuple[int, int], tuple[int, Bid]]
    currencies: dict[str, int]


def _newest(session: Session) -> tuple[int, int] | None:
    row = session.execute(select(GigaspotSnapshot.id, GigaspotSnapshot.time)
                          .order_by(GigaspotSnapshot.id.desc()).limit(1)).first()
    return (row.id, row.time) if row else None


def _load_open_rows(session: Session) -> _OpenRows:
    newest = _newest(session)
    currencies = {name: cid for cid, name in session.execute(select(Currency.id, Currency.name))}
    names = {cid: name for name, cid in currencies.items()}
    f, s, b = FACTS.c, STATES.c, BIDS.c
    facts = {row[0]: (row[1], Facts(*row[2:])) for row in session.execute(
        select(f.machine_id, f.first_snapshot, f.cpu, f.cores, f.threads, f.ram, f.cuda, f.cc,
               f.host, f.gpus).where(f.end_snapshot.is_(None)))}
    states = {row[0]: (row[1], State(*row[2:])) for row in session.execute(
        select(s.machine_id, s.first_snapshot, s.online, s.on_demand_rented, s.working_properly,
               s.reliability, s.min_bid, s.max_rental_length, s.energy_price)
        .where(s.end_snapshot.is_(None)))}
    bids = {(row[0], row[1]): (row[2], Bid(row[3], row[4], row[5], names[row[6]], *row[7:]))
            for row in session.execute(
                select(b.machine_id, b.bid_id, b.first_snapshot, b.owner, b.active, b.price,
                       b.currency_id, b.pl, b.to_cache, b.cached).where(b.end_snapshot.is_(None)))}
    return _OpenRows(newest, facts, states, bids, currencies)


def _gpu_summary(gpus: list[dict[str, Any]]) -> tuple[int, str, float | None, float | None]:
    """(count, first model, highest minimum power limit, lowest maximum power limit)."""
    if not gpus:
        return 0, "", None, None
    return (len(gpus), gpus[0]["model"], float(max(g["pl"][0] for g in gpus)),
            float(min(g["pl"][1] for g in gpus)))


def _close(connection: Connection, table: Table, keys: tuple[str, ...],
           closed: Iterable[tuple[Any, int]], at: int) -> None:
    """Set ``end_snapshot = at`` on the rows named by (key, first)."""
    statement = update(table).where(
        *(table.c[k] == bindparam(f"k_{k}") for k in keys),
        table.c.first_snapshot == bindparam("k_first")).values(end_snapshot=bindparam("k_end"))
    names = ("k_end", *(f"k_{k}" for k in keys), "k_first")
    rows = [(at, *key, first) if isinstance(key, tuple) else (at, key, first) for key, first in closed]
    executemany(connection, statement, names, rows)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Parsing a snapshot allocates about a million containers that form no cycles; left on, the
    cyclic garbage collector walks them (and the open rows) many times over, which costs as much as
    the parse itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SnapshotIngester:
    """Records snapshots through sessions from ``session_factory``, one transaction each.

    Use one ingester per database writer (the poller, ``bidder import``); it is not thread-safe.
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        self._open: _OpenRows | None = None

    def ingest(self, raw: bytes, *, snapshot_time: int, fetched_at: float, source: str,
               url: str | None = None, clore_price: float | None = None,
               creation_fees: dict[str, float] | None = None,
               my_user_id: int | None = None) -> IngestResult:
        """Validate and record one CDN snapshot taken at ``snapshot_time`` (UNIX seconds).

        The same snapshot again is a no-op (``duplicate=True``). Raises ``SnapshotError`` for a
        malformed snapshot, one older than the newest recorded, or other content under a recorded
        time; nothing is written then.
        """
        digest = hashlib.sha256(raw).hexdigest()
        with _collector_paused(), self._sessions() as session, session.begin():
            serialise(session, GIGASPOT_INGEST)  # before any read: see the last ingest's commit
            known = session.execute(select(GigaspotSnapshot).where(
                GigaspotSnapshot.time == snapshot_time)).scalar_one_or_none()
            if known is not None:
                if known.sha256 != digest:
                    raise SnapshotError(source, None, None, (
                        f"a different snapshot for {format_time(snapshot_time)} is already "
                        f"recorded (from {known.source})"))
                return IngestResult(known.id, snapshot_time, known.machines, 0, 0, 0, 0, 0,
                                    duplicate=True)
            newest = _newest(session)
            if newest is not None and snapshot_time < newest[1]:
                raise SnapshotError(source, None, None, (
                    f"taken at {format_time(snapshot_time)}, before the newest recorded snapshot "
                    f"({format_time(newest[1])}); snapshots are recorded in time order only"))
            open_rows = self._open
            if open_rows is None or open_rows.newest != newest:
                open_rows = _load_open_rows(session)
            parsed = parse_snapshot(raw, source, {m: v for m, (_, v) in open_rows.facts.items()})
            record = GigaspotSnapshot(
                time=snapshot_time, fetched_at=fetched_at, source=source, url=url, sha256=digest,
                clore_price=clore_price, creation_fees=creation_fees, my_user_id=my_user_id,
                machines=len(parsed.states))
            session.add(record)
            session.flush()
            result, after = _write(session, record, parsed, open_rows)
        self._open = after
        return result


def _write(session: Session, record: GigaspotSnapshot, parsed: ParsedSnapshot,
           open_rows: _OpenRows) -> tuple[IngestResult, _OpenRows]:
    """Close and open the rows snapshot ``record`` changes; the open rows after it."""
    at = record.id
    connection = session.connection()
    facts = diff_versions(open_rows.facts, parsed.facts, at, close_missing=False)
    states = diff_versions(open_rows.states, parsed.states, at)
    bids = diff_versions(open_rows.bids, parsed.bids, at)

    currencies = dict(open_rows.currencies)
    for name in sorted({bid.currency for _, bid in bids.opened} - currencies.keys()):
        inserted = session.execute(insert(Currency).values(name=name))
        currencies[name] = inserted.inserted_primary_key[0]

    _close(connection, FACTS, ("machine_id",), facts.closed, at)
    _close(connection, STATES, ("machine_id",), states.closed, at)
    _close(connection, BIDS, ("machine_id", "bid_id"), bids.closed, at)
    executemany(connection, insert(FACTS), (
        "machine_id", "first_snapshot", "cpu", "cores", "threads", "ram", "cuda", "cc", "host",
        "gpus", "gpu_count", "gpu_model", "pl_min", "pl_max"), [
        (machine_id, at, *f[:7], to_json(f.gpus).decode(), *_gpu_summary(f.gpus))
        for machine_id, f in facts.opened])
    executemany(connection, insert(STATES), (
        "machine_id", "first_snapshot", "online", "on_demand_rented", "working_properly",
        "reliability", "min_bid", "max_rental_length", "energy_price"), [
        (machine_id, at, *state) for machine_id, state in states.opened])
    executemany(connection, insert(BIDS), (
        "machine_id", "bid_id", "first_snapshot", "owner", "active", "price", "currency_id", "pl",
        "to_cache", "cached"), [
        (machine_id, bid_id, at, b.owner, b.active, b.price, currencies[b.currency], b.pl,
         b.to_cache, b.cached) for (machine_id, bid_id), b in bids.opened])
    result = IngestResult(at, record.time, len(parsed.states), len(facts.opened),
                          len(states.opened), len(bids.opened), len(states.closed),
                          len(bids.closed), duplicate=False)
    after = _OpenRows((at, record.time), facts.open_rows, states.open_rows, bids.open_rows,
                      currencies)
    return result, after

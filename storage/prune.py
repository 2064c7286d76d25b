"""Removing old market history (``bidder db prune``) while the bot may be recording.

What goes, for a cut time ``before``: everything no view of the market at or after ``before``
reads, so every frame of that time on, and a backtest from it, come out as they did before.

- GigaSPOT: the snapshots taken before ``before`` (the newest snapshot is always kept, so a cut
  after the last one keeps one), and the version rows that ended at or before the first kept
  snapshot ``F``. A version that spans the cut keeps its ``first_snapshot``, an id no longer
  recorded: every reader selects versions by comparing ids (``first_snapshot <= id <
  end_snapshot``), so it holds from ``F`` on as before. It is not moved up to ``F``: a running
  recorder keeps the open versions in memory and closes one by its (key, ``first_snapshot``), so
  a moved row would never be closed and the machine would end up with two open versions.
- Spot polls (and their offers) older than ``SPOT_LOOKBACK`` before ``before`` (or before the
  newest poll, if that is older): the spot view at any time looks back that far for each
  server's newest poll, and a backtest from ``before`` reads the polls of that day too.
  Currency rates go when no kept poll refers to them and no reader of a moment from the kept
  polls on picks them (the rates in effect when the kept polls begin stay).
- Marketplace listings taken before ``before`` except the newest of them, the listing in effect
  at ``before`` (the spot view of any later moment, and the live bot's candidates when no newer
  listing exists, come from it). Each server's entry valid in that listing, or its last entry
  if it had left the listings before, is moved up to start at it (``first_listing``; an entry
  that had ended then gets the empty span ``[kept, kept)``); its older entries go. Listings are
  read afresh by each recording, so moving an entry is safe; on PostgreSQL the moves hold the
  listing recorder's advisory lock (``storage.locks``).

Nothing else is touched: the bot's orders, their events, the journal, runs, cycles, decisions,
API calls, blocks, alerts, log, lease and the schema tables stay as they are.

How it runs: a plan is read first (``plan_prune``, read-only: what ``--dry-run`` shows), then each
batch of about ``BATCH_ROWS`` rows is deleted in a transaction of its own (``prune``), oldest data
and whole snapshots first. Each batch leaves a state every reader can use: snapshots go before
the versions only they held, a poll goes with its offers, an entry is moved and its older entries
removed together. So a reader never sees a half-pruned view, and a prune that stops (an error,
Ctrl-C) leaves the rest for the next run. On SQLite, where one writer holds the lock at a time,
a batch takes about 0.1 s (``benchmarks/bench_prune.py``; the bot's writers wait
``busy_timeout``, 10 s, for the lock), and after each one the prune waits ``WRITER_TURN`` so a
writer waiting for the lock gets it. On PostgreSQL a batch locks only the rows it deletes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Delete,
    Engine,
    Select,
    Table,
    and_,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import StorageError
from storage.locks import MARKETPLACE_INGEST, serialise
from storage.market_views import SPOT_MAX_AGE
from storage.models import (
    BIDS,
    FACTS,
    STATES,
    CurrencyRates,
    GigaspotSnapshot,
    MarketplaceListing,
    MarketplaceServer,
    SpotOffer,
    SpotOfferCurrency,
    SpotPoll,
)

log = logging.getLogger(__name__)

BATCH_ROWS = 20_000
"""Rows deleted per transaction, about: on SQLite about 0.1 s (0.12 s at most for 10,000
machines' versions, ``benchmarks/bench_prune.py``), far below the 10 s the bot's writers wait
for the lock."""
WRITER_TURN = 0.15
"""Seconds the prune waits after each batch on SQLite. A writer that found the lock taken retries
at most every 0.1 s (SQLite's busy handler), so it gets the lock in this pause."""
SPOT_LOOKBACK = SPOT_MAX_AGE
"""Seconds of spot polls kept before the cut: how far the spot view looks back for a server's
newest poll."""
RATES_CHUNK = 500
"""Currency rate ids deleted per statement."""

SNAPSHOTS: Table = GigaspotSnapshot.__table__  # type: ignore[assignment]
POLLS: Table = SpotPoll.__table__  # type: ignore[assignment]
OFFERS: Table = SpotOffer.__table__  # type: ignore[assignment]
OFFER_CURRENCIES: Table = SpotOfferCurrency.__table__  # type: ignore[assignment]
RATES: Table = CurrencyRates.__table__  # type: ignore[assignment]
LISTINGS: Table = MarketplaceListing.__table__  # type: ignore[assignment]
ENTRIES: Table = MarketplaceServer.__table__  # type: ignore[assignment]

PRUNED_TABLES: tuple[Table, ...] = (SNAPSHOTS, FACTS, STATES, BIDS, OFFER_CURRENCIES, OFFERS,
                                    POLLS, RATES, ENTRIES, LISTINGS)
"""Every table a prune deletes from, in the order it reports them."""

Kind = Literal["snapshots", "versions", "polls", "rates", "entries", "listings"]


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a prune cuts each market's history."""

    before: float
    """The cut time given, UNIX seconds."""
    snapshot_id: int | None
    """The first GigaSPOT snapshot kept (None: no snapshot recorded)."""
    snapshot_time: int | None
    spot_before: float
    """Spot polls taken before this go: ``SPOT_LOOKBACK`` before ``before``, or before the newest
    poll if that is older (the live spot view reads the polls of that day)."""
    listing_id: int | None
    """The first marketplace listing kept: the one in effect at ``before``, or the first one when
    all are later (None: no listing recorded)."""
    listing_time: float | None


@dataclass(frozen=True, slots=True)
class Batch:
    """One transaction's work: rows of ``table`` (``kind``) whose key is in ``lo..hi``
    (inclusive), for a version table also whose ``first_snapshot`` is in ``first``."""

    kind: Kind
    table: str
    lo: int
    hi: int
    rows: int
    """Rows expected to go (and, for ``entries``, be moved)."""
    first: tuple[int, int] | None = None
    ids: tuple[int, ...] = ()
    """For ``rates``: the ids to delete."""


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What a prune would do, as read from the database (nothing changed)."""

    cut: Cut
    rows: dict[str, int]
    """Rows that go, per table (``PRUNED_TABLES`` order)."""
    moved: int
    """Listing entries moved up to start at the kept listing."""
    batches: tuple[Batch, ...]
    first_kept: dict[str, float | None]
    """Per market (``gigaspot``, ``spot``, ``listings``): its first recorded time afterwards."""

    @property
    def empty(self) -> bool:
        return not any(self.rows.values()) and not self.moved


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune did."""

    plan: PrunePlan
    rows: dict[str, int]
    """Rows removed, per table."""
    moved: int
    batches: int
    first_kept: dict[str, float | None]


# --- the plan -----------------------------------------------------------------------------------


def plan_prune(connection: Connection, before: float, *,
               batch_rows: int = BATCH_ROWS) -> PrunePlan:
    """What ``prune`` removes for the cut ``before``: read only (a reader's connection will do)."""
    cut = find_cut(connection, before)
    batches: list[Batch] = []
    rows = {t.name: 0 for t in PRUNED_TABLES}
    moved = 0
    if cut.snapshot_id is not None:
        snapshot_ids = list(connection.scalars(select(SNAPSHOTS.c.id).where(
            SNAPSHOTS.c.id < cut.snapshot_id).order_by(SNAPSHOTS.c.id)))
        rows[SNAPSHOTS.name] = len(snapshot_ids)
        batches += [Batch("snapshots", SNAPSHOTS.name, chunk[0], chunk[-1], len(chunk))
                    for chunk in _chunks(snapshot_ids, batch_rows)]
        for table in (FACTS, STATES, BIDS):
            found = _version_batches(connection, table, cut.snapshot_id, batch_rows)
            rows[table.name] = sum(b.rows for b in found)
            batches += found
    poll_batches, polls, offers, stated = _poll_batches(connection, cut.spot_before, batch_rows)
    rows[POLLS.name], rows[OFFERS.name], rows[OFFER_CURRENCIES.name] = polls, offers, stated
    batches += poll_batches
    rate_ids = _rates_to_delete(connection, cut.spot_before)
    rows[RATES.name] = len(rate_ids)
    batches += [Batch("rates", RATES.name, chunk[0], chunk[-1], len(chunk), ids=tuple(chunk))
                for chunk in _chunks(rate_ids, RATES_CHUNK)]
    if cut.listing_id is not None:
        entry_batches, moved = _entry_batches(connection, cut.listing_id, batch_rows)
        rows[ENTRIES.name] = sum(b.rows for b in entry_batches) - moved
        batches += entry_batches
        listing_ids = list(connection.scalars(select(LISTINGS.c.id).where(
            LISTINGS.c.id < cut.listing_id).order_by(LISTINGS.c.id)))
        rows[LISTINGS.name] = len(listing_ids)
        batches += [Batch("listings", LISTINGS.name, chunk[0], chunk[-1], len(chunk))
                    for chunk in _chunks(listing_ids, batch_rows)]
    first_kept = {
        "gigaspot": float(cut.snapshot_time) if cut.snapshot_time is not None else None,
        "spot": _float(connection.scalar(select(func.min(POLLS.c.polled_at))
                                         .where(POLLS.c.polled_at >= cut.spot_before))),
        "listings": cut.listing_time,
    }
    return PrunePlan(cut, rows, moved, tuple(batches), first_kept)


def find_cut(connection: Connection, before: float) -> Cut:
    """The first snapshot and listing kept for the cut ``before``."""
    s = SNAPSHOTS.c
    first = connection.execute(select(s.id, s.time).where(s.time >= before)
                               .order_by(s.id).limit(1)).first()
    if first is None:  # nothing at or after the cut: the newest snapshot stays
        first = connection.execute(select(s.id, s.time).order_by(s.id.desc()).limit(1)).first()
    li = LISTINGS.c
    listing = connection.execute(select(li.id, li.taken_at).where(li.taken_at <= before)
                                 .order_by(li.id.desc()).limit(1)).first()
    if listing is None:  # every listing is from after the cut: none goes
        listing = connection.execute(select(li.id, li.taken_at).order_by(li.id).limit(1)).first()
    newest_poll = connection.scalar(select(func.max(POLLS.c.polled_at)))
    spot_end = before if newest_poll is None else min(before, float(newest_poll))
    return Cut(before=before,
               snapshot_id=None if first is None else int(first.id),
               snapshot_time=None if first is None else int(first.time),
               spot_before=spot_end - SPOT_LOOKBACK,
               listing_id=None if listing is None else int(listing.id),
               listing_time=None if listing is None else float(listing.taken_at))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _chunks(values: Sequence[int], size: int) -> list[Sequence[int]]:
    return [values[i:i + size] for i in range(0, len(values), max(size, 1))]


def _ranges(counts: Iterable[tuple[int, int]], limit: int) -> list[tuple[int, int, int]]:
    """Consecutive keys (sorted, with their row counts) grouped into ``(lo, hi, rows)`` ranges of
    at most ``limit`` rows; a key with more rows is a range of its own."""
    out: list[tuple[int, int, int]] = []
    for key, n in counts:
        if out and out[-1][2] + n <= limit:
            out[-1] = (out[-1][0], key, out[-1][2] + n)
        else:
            out.append((key, key, n))
    return out


def _ended_by(table: Table, snapshot_id: int) -> ColumnElement[bool]:
    """Versions that ended at or before snapshot ``snapshot_id``: held in no later one."""
    c = table.c
    return and_(c.end_snapshot.is_not(None), c.end_snapshot <= snapshot_id)


def _version_batches(connection: Connection, table: Table, snapshot_id: int,
                     limit: int) -> list[Batch]:
    """Batches of the versions of ``table`` that ended by the first kept snapshot, by machine
    (the primary key starts with it); a machine with more than ``limit`` of them is split into
    ranges of ``first_snapshot`` of about ``limit`` rows each."""
    c = table.c
    per_machine = connection.execute(
        select(c.machine_id, func.count(), func.min(c.first_snapshot), func.max(c.first_snapshot))
        .where(_ended_by(table, snapshot_id)).group_by(c.machine_id).order_by(c.machine_id)).all()
    spans = {int(m): (int(lo), int(hi)) for m, n, lo, hi in per_machine if n > limit}
    batches: list[Batch] = []
    for lo, hi, n in _ranges(((int(m), int(n)) for m, n, _, _ in per_machine), limit):
        if lo != hi or lo not in spans:
            batches.append(Batch("versions", table.name, lo, hi, n))
            continue
        first, last = spans[lo]
        width = -(-(last - first + 1) // -(-n // limit))  # ceil(span / ceil(n / limit))
        starts = range(first, last + 1, width)
        share = [n // len(starts) + (i < n % len(starts)) for i in range(len(starts))]
        batches += [Batch("versions", table.name, lo, hi, k, first=(s, min(s + width - 1, last)))
                    for s, k in zip(starts, share)]
    return batches


def _poll_batches(connection: Connection, spot_before: float,
                  limit: int) -> tuple[list[Batch], int, int, int]:
    """Batches of the polls taken before ``spot_before`` by id, each with its offers (a poll and
    its offers go together); and how many polls, offers and offer currencies go."""
    p, o, oc = POLLS.c, OFFERS.c, OFFER_CURRENCIES.c
    per_poll = connection.execute(
        select(p.id, func.count(o.offer_id)).select_from(POLLS)
        .outerjoin(OFFERS, o.poll_id == p.id)
        .where(p.polled_at < spot_before).group_by(p.id).order_by(p.id)).all()
    stated = int(connection.scalar(
        select(func.count()).select_from(OFFER_CURRENCIES).join(POLLS, p.id == oc.poll_id)
        .where(p.polled_at < spot_before)) or 0)
    batches = [Batch("polls", POLLS.name, lo, hi, n)
               for lo, hi, n in _ranges(((int(i), 1 + int(n)) for i, n in per_poll), limit)]
    return batches, len(per_poll), sum(int(n) for _, n in per_poll), stated


def _rates_to_delete(connection: Connection, spot_before: float) -> list[int]:
    """Rates rows first seen before ``spot_before`` that no kept poll refers to and that no reader
    of a moment from ``spot_before`` on picks: the live view takes the highest id first seen by
    then, a backtest the last by (first_seen, id); both of those stay."""
    r, p = RATES.c, POLLS.c
    older = connection.execute(select(r.id, r.first_seen).where(r.first_seen < spot_before)
                               .order_by(r.id)).all()
    if not older:
        return []
    by_id = connection.scalar(select(func.max(r.id)).where(r.first_seen <= spot_before))
    by_time = connection.execute(select(r.id).where(r.first_seen <= spot_before)
                                 .order_by(r.first_seen.desc(), r.id.desc()).limit(1)).scalar()
    referenced = set(connection.scalars(select(p.rates_id).distinct().where(
        p.polled_at >= spot_before, p.rates_id.is_not(None))))
    keep = referenced | {by_id, by_time}
    return [int(i) for i, _ in older if i not in keep]


def _entry_batches(connection: Connection, listing_id: int,
                   limit: int) -> tuple[list[Batch], int]:
    """Batches of the listing entries that start before the kept listing, by server; and how
    many of them are each server's entry in effect then, which are moved up instead."""
    m = ENTRIES.c
    per_server = connection.execute(
        select(m.server_id, func.count()).where(m.first_listing < listing_id)
        .group_by(m.server_id).order_by(m.server_id)).all()
    moved = int(connection.scalar(select(func.count()).select_from(_moves(listing_id).subquery()))
                or 0)
    return ([Batch("entries", ENTRIES.name, lo, hi, n)
             for lo, hi, n in _ranges(((int(s), int(n)) for s, n in per_server), limit)], moved)


def _moves(listing_id: int, lo: int | None = None, hi: int | None = None) -> Select:
    """(server, first_listing) of each server's entry in effect at listing ``listing_id`` (its
    newest starting at or before it, as the spot view picks it) when that starts before it."""
    m = ENTRIES.c
    query = select(m.server_id, func.max(m.first_listing).label("first")) \
        .where(m.first_listing <= listing_id)
    if lo is not None:
        query = query.where(m.server_id.between(lo, hi))
    return query.group_by(m.server_id).having(func.max(m.first_listing) < listing_id)


# --- the prune ----------------------------------------------------------------------------------


def prune(engine: Engine, plan: PrunePlan, *,
          turn: Callable[[], None] | None = None) -> PruneResult:
    """Carry out ``plan`` on the writer ``engine``: each batch in its own transaction, then
    ``turn()`` (default: on SQLite, wait ``WRITER_TURN`` for waiting writers; nothing on
    PostgreSQL). Raises ``StorageError`` when a batch fails: the batches before it stay done, and
    the database is as consistent as between any two batches (run the prune again)."""
    if turn is None:
        turn = _writer_turn if engine.dialect.name == "sqlite" else _nothing
    removed = {t.name: 0 for t in PRUNED_TABLES}
    moved = 0
    done = 0
    for batch in plan.batches:
        try:
            with engine.begin() as connection:
                counts, n_moved = _run(connection, plan.cut, batch)
        except SQLAlchemyError as err:
            raise StorageError(
                f"the prune stopped in {batch.table} after {done:,} of {len(plan.batches):,} "
                f"batches (what they removed stays removed, the rest is as it was; run it "
                f"again): {str(err).splitlines()[0]}") from None
        for name, n in counts.items():
            removed[name] += n
        moved += n_moved
        done += 1
        turn()
    for table in PRUNED_TABLES:
        if removed[table.name]:
            log.debug("pruned %s: %d rows", table.name, removed[table.name])
    with engine.connect() as connection:
        first_kept = first_recorded(connection)
    return PruneResult(plan, removed, moved, done, first_kept)


def _writer_turn() -> None:
    time.sleep(WRITER_TURN)


def _nothing() -> None:
    return None


def first_recorded(connection: Connection) -> dict[str, float | None]:
    """Per market, the time of its oldest recorded data."""
    return {"gigaspot": _float(connection.scalar(select(func.min(SNAPSHOTS.c.time)))),
            "spot": _float(connection.scalar(select(func.min(POLLS.c.polled_at)))),
            "listings": _float(connection.scalar(select(func.min(LISTINGS.c.taken_at))))}


def _run(connection: Connection, cut: Cut, batch: Batch) -> tuple[dict[str, int], int]:
    """One batch, inside the caller's transaction: rows removed per table, entries moved."""
    if batch.kind == "snapshots":
        assert cut.snapshot_id is not None
        c = SNAPSHOTS.c
        return {batch.table: _deleted(connection, delete(SNAPSHOTS).where(
            c.id.between(batch.lo, batch.hi), c.id < cut.snapshot_id))}, 0
    if batch.kind == "versions":
        assert cut.snapshot_id is not None
        table = {t.name: t for t in (FACTS, STATES, BIDS)}[batch.table]
        c = table.c
        where = [c.machine_id.between(batch.lo, batch.hi), _ended_by(table, cut.snapshot_id)]
        if batch.first is not None:
            where.append(c.first_snapshot.between(*batch.first))
        return {batch.table: _deleted(connection, delete(table).where(*where))}, 0
    if batch.kind == "polls":
        p = POLLS.c
        polls = select(p.id).where(p.id.between(batch.lo, batch.hi),
                                   p.polled_at < cut.spot_before)
        return {
            OFFER_CURRENCIES.name: _deleted(connection, delete(OFFER_CURRENCIES).where(
                OFFER_CURRENCIES.c.poll_id.between(batch.lo, batch.hi),
                OFFER_CURRENCIES.c.poll_id.in_(polls))),
            OFFERS.name: _deleted(connection, delete(OFFERS).where(
                OFFERS.c.poll_id.between(batch.lo, batch.hi), OFFERS.c.poll_id.in_(polls))),
            POLLS.name: _deleted(connection, delete(POLLS).where(
                p.id.between(batch.lo, batch.hi), p.polled_at < cut.spot_before)),
        }, 0
    if batch.kind == "rates":
        return {batch.table: _deleted(connection, delete(RATES).where(
            RATES.c.id.in_(batch.ids), RATES.c.first_seen < cut.spot_before))}, 0
    assert cut.listing_id is not None
    if batch.kind == "entries":
        return _entries(connection, cut.listing_id, batch)
    c = LISTINGS.c
    return {batch.table: _deleted(connection, delete(LISTINGS).where(
        c.id.between(batch.lo, batch.hi), c.id < cut.listing_id))}, 0


def _entries(connection: Connection, listing_id: int, batch: Batch) -> tuple[dict[str, int], int]:
    """Move each server's entry in effect at the kept listing up to it, then remove the older
    entries (of the servers ``batch.lo..hi``). Under the listing recorder's lock on PostgreSQL,
    taken before the entries are read: a recording closes an entry by (server, first)."""
    serialise(connection, MARKETPLACE_INGEST)
    m = ENTRIES.c
    moves = connection.execute(_moves(listing_id, batch.lo, batch.hi)).all()
    # an entry that had ended by then gets [kept, kept): still the server's last known entry
    # (the spot view reads it for a polled server), valid in no listing
    ended = and_(m.end_listing.is_not(None), m.end_listing < listing_id)
    end = case((ended, listing_id), else_=m.end_listing)
    for server_id, first in moves:
        connection.execute(update(ENTRIES).where(m.server_id == server_id,
                                                 m.first_listing == first)
                           .values(first_listing=listing_id, end_listing=end))
    removed = _deleted(connection, delete(ENTRIES).where(m.server_id.between(batch.lo, batch.hi),
                                                         m.first_listing < listing_id))
    return {ENTRIES.name: removed}, len(moves)


def _deleted(connection: Connection, statement: Delete) -> int:
    return int(connection.execute(statement).rowcount or 0)

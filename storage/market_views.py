"""The recorded market at one moment, as the ``MarketFrame`` the engine and strategies read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session

from bidder.config import CLORE
from storage.frames import MarketFrame, empty_frame
from storage.arrays import to_columns
from storage.bulk import fetch_rows
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

SPOT_MAX_AGE = 86_400.0
"""Seconds: a spot server whose newest poll is older than this (before the frame's time) is left
out of the spot frame; it is no longer part of the market we watch."""


def _held_at(table: Table, snapshot_id: int, newest: bool) -> ColumnElement[bool]:
    """Versions that held in snapshot ``snapshot_id``; in the newest one, exactly the open rows
    (which their partial index finds without a scan)."""
    c = table.c
    if newest:
        return c.end_snapshot.is_(None)
    return and_(c.first_snapshot <= snapshot_id,
                or_(c.end_snapshot.is_(None), c.end_snapshot > snapshot_id))


def _aligned(keys: np.ndarray, rows_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted ``keys``, the row of each in sorted ``rows_keys`` and whether it is there."""
    position = np.searchsorted(rows_keys, keys)
    clipped = np.minimum(position, max(len(rows_keys) - 1, 0))
    found = (position < len(rows_keys)) & (rows_keys[clipped] == keys) if len(rows_keys) else \
        np.zeros(len(keys), dtype=bool)
    return clipped, found


def _pick(values: np.ndarray, row: np.ndarray, found: np.ndarray, missing: object) -> np.ndarray:
    out = np.full(len(row), missing, dtype=values.dtype)
    if len(values):
        out[found] = values[row[found]]
    return out


def gigaspot_frame_reads(snapshot_id: int, newest: bool) -> tuple[Select, Select, Select]:
    """The three reads of a GigaSPOT frame: states and facts by machine, bids by machine and bid.
    In the newest snapshot each reads exactly the columns, in the order, of its table's index of
    open rows (schema version 6), so the database answers from that index alone."""
    s, f, b = STATES.c, FACTS.c, BIDS.c
    return (select(s.machine_id, s.online, s.on_demand_rented, s.working_properly, s.reliability,
                   s.min_bid, s.max_rental_length, s.energy_price)
            .where(_held_at(STATES, snapshot_id, newest)).order_by(s.machine_id),
            select(f.machine_id, f.gpu_count, f.gpu_model, f.cc, f.pl_min, f.pl_max)
            .where(_held_at(FACTS, snapshot_id, newest)).order_by(f.machine_id),
            select(b.machine_id, b.bid_id, b.owner, b.price, b.pl, b.active)
            .where(_held_at(BIDS, snapshot_id, newest)).order_by(b.machine_id, b.bid_id))


def gigaspot_frame(session: Session, *, my_user_id: int | None = None,
                   at: float | None = None) -> MarketFrame:
    """The GigaSPOT market in the newest snapshot taken at or before ``at`` (default: the newest).

    ``bid_mine`` marks bids owned by ``my_user_id``, or by the user id recorded with the snapshot
    when ``my_user_id`` is None. Before any snapshot: an empty frame. Its reads see one moment of
    the database (``one_snapshot``): an ingest that commits meanwhile is in none of them.
    """
    with one_snapshot(session) as connection:
        return _gigaspot_frame(connection, my_user_id, at)


@contextmanager
def one_snapshot(session: Session) -> Iterator[Connection]:
    """A connection whose reads all see the same committed state of the database.

    On PostgreSQL (READ COMMITTED) each statement sees the commits made before it, so a frame read
    in several statements could take states from one snapshot and bids from the next: the reads run
    in a read-only REPEATABLE READ transaction on a connection of their own. SQLite sessions hold
    one snapshot per transaction already (a writer's even blocks the ingest): ``session``'s own
    connection.
    """
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        yield session.connection()
        return
    engine = bind if isinstance(bind, Engine) else bind.engine
    with engine.connect() as connection:
        # not the postgresql_readonly option: its reset makes the pooled connection READ WRITE,
        # overriding a reader engine's default_transaction_read_only
        connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            connection.execute(text("SET TRANSACTION READ ONLY"))
            yield connection


def _gigaspot_frame(connection: Connection, my_user_id: int | None,
                    at: float | None) -> MarketFrame:
    g = GigaspotSnapshot
    query = select(g.id, g.time, g.clore_price, g.my_user_id).order_by(g.id.desc()).limit(1)
    newest = connection.execute(query).first()
    snapshot = newest if at is None else connection.execute(query.where(g.time <= at)).first()
    if snapshot is None:
        return empty_frame("gigaspot", float(at) if at is not None else 0.0)
    is_newest = newest is not None and snapshot.id == newest.id
    states, facts, bids = gigaspot_frame_reads(snapshot.id, is_newest)
    server_id, online, rented, working, reliability, min_bid, mrl, energy = to_columns(
        fetch_rows(connection, states),
        (np.int64, bool, bool, bool, np.float64, np.float64, np.int64, np.float64))
    f_id, f_gpus, f_model, f_cc, f_pl_min, f_pl_max = to_columns(
        fetch_rows(connection, facts), (np.int64, np.int32, object, object, np.float64, np.float64))
    row, found = _aligned(server_id, f_id)
    b_machine, bid_id, owner, price, pl, active = to_columns(
        fetch_rows(connection, bids), (np.int64, np.int64, np.int64, np.float64, np.float64, bool))
    me = my_user_id if my_user_id is not None else snapshot.my_user_id
    return MarketFrame(
        market="gigaspot",
        time=float(snapshot.time),
        clore_usd=float(snapshot.clore_price) if snapshot.clore_price is not None else float("nan"),
        rates_usd={},
        server_id=server_id,
        gpus=_pick(f_gpus, row, found, 0),
        gpu_model=_pick(f_model, row, found, ""),
        country=_pick(f_cc, row, found, ""),
        reliability=reliability,
        online=online,
        rentable=(mrl > 0) & ~rented,
        working_properly=working,
        energy_price=energy,
        pl_min=_pick(f_pl_min, row, found, np.nan),
        pl_max=_pick(f_pl_max, row, found, np.nan),
        observed_at=np.full(len(server_id), float(snapshot.time)),
        floors={CLORE: min_bid},
        bid_start=np.append(np.searchsorted(b_machine, server_id, side="left"),
                            len(b_machine)).astype(np.int64),
        bid_id=bid_id,
        bid_owner=owner,
        bid_price=price,
        bid_pl=pl,
        bid_active=active,
        bid_mine=owner == me if me is not None else np.zeros(len(owner), dtype=bool),
    )


def _newest_per(key: ColumnElement[object], order: tuple[ColumnElement[object], ...],
                columns: tuple[ColumnElement[object], ...], where: ColumnElement[bool]) -> Select:
    """``columns`` of the newest row (by ``order``) per ``key`` among the rows matching ``where``."""
    rank = func.row_number().over(partition_by=key, order_by=[o.desc() for o in order])
    ranked = select(*columns, rank.label("rank")).where(where).subquery()
    return select(*(ranked.c[c.key] for c in columns)).where(ranked.c.rank == 1) \
        .order_by(ranked.c[key.key])


def spot_frame(session: Session, *, at: float | None = None,
               max_age: float = SPOT_MAX_AGE) -> MarketFrame:
    """The spot market at ``at`` (default: the newest poll): every server polled in the
    ``max_age`` seconds before, with its newest poll (floors, offers, online, visibility) and its
    newest marketplace entry (GPUs, country, reliability, rented).

    Spot servers are polled one by one, so ``observed_at`` is each server's own poll time. Offers
    become bids with ``bid_owner`` -1 (the API does not say whose they are) and ``bid_mine`` from
    ``my``. Spot has no ``working_properly`` (True), energy price or power limits (NaN).
    """
    if at is None:
        at = session.scalar(select(func.max(SpotPoll.polled_at)))
        if at is None:
            return empty_frame("spot", 0.0)
    p = SpotPoll
    polls = session.execute(_newest_per(
        p.server_id, (p.polled_at, p.id),
        (p.server_id, p.id, p.polled_at, p.market_exists, p.online, p.visibility, p.mrl,
         p.min_pricing),
        and_(p.polled_at <= at, p.polled_at >= at - max_age))).all()
    if not polls:
        return empty_frame("spot", float(at))
    server_id, poll_id, polled_at = to_columns([r[:3] for r in polls], (np.int64, np.int64, np.float64))
    exists = np.array([r.market_exists is not False for r in polls], dtype=bool)
    online = np.array([bool(r.online) for r in polls], dtype=bool)
    open_market = np.array([r.visibility == "public" and (r.mrl is None or r.mrl > 0)
                            for r in polls], dtype=bool)
    currencies = sorted({c for r in polls for c in r.min_pricing})
    floors = {c: np.array([r.min_pricing.get(c, np.nan) for r in polls], dtype=np.float64)
              for c in currencies}

    listing = session.scalar(select(func.max(MarketplaceListing.id))
                             .where(MarketplaceListing.taken_at <= at))
    m = MarketplaceServer
    listed = session.execute(_newest_per(
        m.server_id, (m.first_listing,),
        (m.server_id, m.gpu_count, m.gpu_model, m.country, m.reliability, m.rented),
        and_(m.first_listing <= (listing or 0), m.server_id.in_(server_id.tolist())))).all()
    l_id, l_gpus, l_model, l_cc, l_reliability = to_columns(
        [r[:5] for r in listed], (np.int64, np.int32, object, object, np.float64))
    l_rented = np.array([r.rented is True for r in listed], dtype=bool)
    row, found = _aligned(server_id, l_id)

    o, oc = SpotOffer, SpotOfferCurrency
    offers = fetch_rows(session.connection(),
                        select(p.server_id, o.offer_id, o.bid, o.active, o.my, oc.currency)
                        .join(p, p.id == o.poll_id)
                        .outerjoin(oc, and_(oc.poll_id == o.poll_id, oc.offer_id == o.offer_id))
                        .where(o.poll_id.in_(poll_id.tolist()))
                        .order_by(p.server_id, o.offer_id))
    o_server, offer_id, bid, active, mine, offer_currency = to_columns(
        offers, (np.int64, np.int64, np.float64, bool, bool, object))

    # The listing's ``rented`` is documented as "rented on demand", but nothing guarantees it
    # stays false while our own offer runs: a server where an offer of ours is seen is ours to
    # keep, whatever the listing says.
    ours = np.isin(server_id, o_server[mine]) if len(o_server) else np.zeros(len(server_id), bool)
    rented = _pick(l_rented, row, found, False) & ~ours

    rates_row = session.execute(select(CurrencyRates.rates).where(CurrencyRates.first_seen <= at)
                                .order_by(CurrencyRates.id.desc()).limit(1)).scalar_one_or_none()
    rates = {str(k): float(v) for k, v in (rates_row or {}).items()}
    n = len(server_id)
    return MarketFrame(
        market="spot",
        time=float(polled_at.max()),
        clore_usd=rates.get(CLORE, float("nan")),
        rates_usd=rates,
        server_id=server_id,
        gpus=np.maximum(_pick(l_gpus, row, found, 0), 0),  # -1: count not in the listing
        gpu_model=_pick(l_model, row, found, ""),
        country=_pick(l_cc, row, found, ""),
        reliability=_pick(l_reliability, row, found, np.nan),
        online=online & exists,
        rentable=exists & open_market & ~rented,
        working_properly=np.ones(n, dtype=bool),
        energy_price=np.full(n, np.nan),
        pl_min=np.full(n, np.nan),
        pl_max=np.full(n, np.nan),
        observed_at=polled_at,
        floors=floors,
        bid_start=np.append(np.searchsorted(o_server, server_id, side="left"),
                            len(o_server)).astype(np.int64),
        bid_id=offer_id,
        bid_owner=np.full(len(offer_id), -1, dtype=np.int64),
        bid_price=bid,
        bid_pl=np.full(len(offer_id), np.nan),
        bid_active=active,
        bid_mine=mine,
        bid_currency=offer_currency if any(offer_currency.tolist()) else None,
    )

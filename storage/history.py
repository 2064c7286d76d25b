"""Recorded GigaSPOT history as numpy arrays, for the backtester and for analysis.

Everything is returned interval-encoded, the way it is stored: one entry per *version* of a bid,
a machine state or a machine's facts, with ``first`` and ``last``, the (inclusive) indices of the
first and last snapshot of ``snapshots`` in which that version held. The backtester expands them
into per-tick matrices; ``machine_history`` does that expansion for one machine.

Time bounds are snapshot times in UNIX seconds, both inclusive; ``None`` is open-ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Table, func, or_, select
from sqlalchemy.orm import Session

from storage.arrays import expand, to_columns
from storage.bulk import fetch_rows
from storage.models import BIDS, FACTS, STATES, Currency, GigaspotSnapshot

_NO_END = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class SnapshotTimes:
    """Recorded snapshots in time order."""

    id: np.ndarray
    """int64: snapshot id (grows with time)"""
    time: np.ndarray
    """int64: snapshot time, UNIX seconds"""
    clore_usd: np.ndarray
    """float64: USD per CLORE from ``get_gigaspot``; NaN when not recorded"""
    my_user_id: np.ndarray
    """int64: our user id when recorded, else -1"""

    def __len__(self) -> int:
        return len(self.id)


def snapshot_times(session: Session, start: float | None = None,
                   end: float | None = None) -> SnapshotTimes:
    """The snapshots recorded between ``start`` and ``end``."""
    s = GigaspotSnapshot
    query = select(s.id, s.time, s.clore_price, s.my_user_id).order_by(s.id)
    if start is not None:
        query = query.where(s.time >= start)
    if end is not None:
        query = query.where(s.time <= end)
    ids, times, clore, users = to_columns(fetch_rows(session.connection(), query),
                                        (np.int64, np.int64, np.float64, np.int64))
    return SnapshotTimes(ids, times, clore, users)


def currency_names(session: Session) -> tuple[str, ...]:
    """Currency names; a bid's ``currency`` code indexes this tuple."""
    return tuple(session.scalars(select(Currency.name).order_by(Currency.id)))


def _currency_codes(session: Session, currency_ids: np.ndarray) -> np.ndarray:
    ids = np.array(session.scalars(select(Currency.id).order_by(Currency.id)).all(), dtype=np.int64)
    lookup = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int16)
    lookup[ids] = np.arange(len(ids), dtype=np.int16)
    return lookup[currency_ids]


def _overlapping(session: Session, table: Table, columns: Sequence[ColumnElement[Any]],
                 dtypes: Sequence[Any], snapshots: SnapshotTimes,
                 machine_ids: Iterable[int] | None,
                 where: Sequence[ColumnElement[bool]] = ()) -> list[np.ndarray]:
    """The versions of ``table`` that held in at least one of ``snapshots`` (which must not be
    empty) and meet every ``where``, in primary-key order: one array per column of ``columns``
    (of ``dtypes``), then ``first_snapshot`` and ``end_snapshot`` (-1: still open).

    The database is not asked to sort: PostgreSQL's sort of a target's million bid versions
    spills to disk under the default ``work_mem`` and took a quarter of the read, while numpy
    sorts them in a tenth of a second (and rows that come in order, as SQLite's through the
    primary key, are only checked). The key is unique, so the order is the one ``ORDER BY``
    gave."""
    c = table.c
    keys = [k for k in table.primary_key.columns if k.name != "first_snapshot"]
    extra = [k for k in keys if not any(k is col for col in columns)]
    end = func.coalesce(c.end_snapshot, -1)  # -1: still open (no None: see ``to_columns``)
    query = select(*columns, *extra, c.first_snapshot, end).where(
        c.first_snapshot <= int(snapshots.id[-1]),
        or_(c.end_snapshot.is_(None), c.end_snapshot > int(snapshots.id[0])), *where)
    if machine_ids is not None:
        query = query.where(c.machine_id.in_([int(m) for m in machine_ids]))
    arrays = to_columns(fetch_rows(session.connection(), query),
                        (*dtypes, *(np.int64 for _ in extra), *_SPAN_DTYPES))
    position = {id(col): i for i, col in enumerate((*columns, *extra))}
    order = _key_order([arrays[position[id(k)]] for k in keys] + [arrays[-2]])
    if order is not None:
        arrays = [a[order] for a in arrays]
    return arrays[:len(columns)] + arrays[-2:]


def _key_order(keys: Sequence[np.ndarray]) -> np.ndarray | None:
    """The permutation that sorts rows by ``keys`` (most significant first); None when they are
    sorted already."""
    if len(keys[0]) < 2:
        return None
    ahead = np.zeros(len(keys[0]) - 1, dtype=bool)  # row i+1 after row i on an earlier key
    tied = np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        ahead |= tied & (key[1:] > key[:-1])
        tied &= key[1:] == key[:-1]
    if (ahead | tied).all():
        return None
    return np.lexsort(tuple(reversed(keys)))


def _spans(snapshots: SnapshotTimes, first: np.ndarray, end: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot-id intervals [first, end) as inclusive indices into ``snapshots``."""
    ids, n = snapshots.id, len(snapshots)
    if n and ids[-1] - ids[0] == n - 1:  # consecutive ids (no gap): positions by subtraction
        return (np.clip(first - ids[0], 0, n),
                np.where(end < 0, n, np.clip(end - ids[0], 0, n)) - 1)
    end = np.where(end < 0, _NO_END, end)  # -1: still open
    return (np.searchsorted(ids, first, side="left").astype(np.int64),
            np.searchsorted(ids, end, side="left").astype(np.int64) - 1)


@dataclass(frozen=True, slots=True)
class BidPrices:
    """Bid versions as a backtest reads its rivals' bids (``bid_prices``: whose bids and in which
    currency is settled by the query)."""

    machine_id: np.ndarray
    """int64"""
    bid_id: np.ndarray
    """int64: the order id"""
    price: np.ndarray
    """float64: per server-day, in the bid's currency (CLORE)"""
    pl: np.ndarray
    """float64: power limit, watts"""
    active: np.ndarray
    """bool: this bid held the machine"""
    first: np.ndarray
    """int64: index in ``snapshots`` of the first snapshot this version held in"""
    last: np.ndarray
    """int64: index in ``snapshots`` of the last snapshot this version held in (inclusive)"""

    def __len__(self) -> int:
        return len(self.bid_id)


@dataclass(frozen=True, slots=True)
class BidIntervals(BidPrices):
    """Bid versions with who placed them and in which currency."""

    snapshots: SnapshotTimes
    owner: np.ndarray
    """int64: user id"""
    currency: np.ndarray
    """int16: index into ``currencies``"""
    currencies: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StateColumns:
    """A machine's state columns, one entry per state version or per snapshot."""

    online: np.ndarray
    """bool"""
    on_demand_rented: np.ndarray
    """bool"""
    working_properly: np.ndarray
    """bool"""
    reliability: np.ndarray
    """float64, 0..1"""
    min_bid: np.ndarray
    """float64, CLORE per day"""
    max_rental_length: np.ndarray
    """int64, seconds (0: cannot be rented)"""
    energy_price: np.ndarray
    """float64, USD per kWh"""


@dataclass(frozen=True, slots=True)
class StateIntervals(StateColumns):
    """State versions; a machine is listed in exactly the snapshots its versions cover."""

    snapshots: SnapshotTimes
    machine_id: np.ndarray
    """int64"""
    first: np.ndarray
    """int64, as in ``BidIntervals``"""
    last: np.ndarray
    """int64, inclusive"""

    def __len__(self) -> int:
        return len(self.machine_id)


@dataclass(frozen=True, slots=True)
class FactIntervals:
    """Facts versions. A machine's facts stay valid while it is away from the snapshot: use
    ``StateIntervals`` to know when it was listed."""

    snapshots: SnapshotTimes
    machine_id: np.ndarray
    """int64"""
    gpu_count: np.ndarray
    """int32"""
    gpu_model: np.ndarray
    """object (str): model of the first GPU"""
    country: np.ndarray
    """object (str): ISO alpha-2, "" when unknown"""
    host: np.ndarray
    """int64: hosting provider id, -1 when unknown"""
    pl_min: np.ndarray
    """float64: lowest power limit every GPU accepts; NaN without GPUs"""
    pl_max: np.ndarray
    """float64: highest power limit every GPU accepts; NaN without GPUs"""
    first: np.ndarray
    """int64, as in ``BidIntervals``"""
    last: np.ndarray
    """int64, inclusive"""

    def __len__(self) -> int:
        return len(self.machine_id)


_BID_COLUMNS = (BIDS.c.machine_id, BIDS.c.bid_id, BIDS.c.owner, BIDS.c.price, BIDS.c.pl,
                BIDS.c.active, BIDS.c.currency_id)
_BID_DTYPES = (np.int64, np.int64, np.int64, np.float64, np.float64, bool, np.int64)
_STATE_COLUMNS = (STATES.c.machine_id, STATES.c.online, STATES.c.on_demand_rented,
                  STATES.c.working_properly, STATES.c.reliability, STATES.c.min_bid,
                  STATES.c.max_rental_length, STATES.c.energy_price)
_STATE_DTYPES = (np.int64, bool, bool, bool, np.float64, np.float64, np.int64, np.float64)
_FACT_COLUMNS = (FACTS.c.machine_id, FACTS.c.gpu_count, FACTS.c.gpu_model, FACTS.c.cc,
                 FACTS.c.host, FACTS.c.pl_min, FACTS.c.pl_max)
_FACT_DTYPES = (np.int64, np.int32, object, object, np.int64, np.float64, np.float64)
_SPAN_DTYPES = (np.int64, np.int64)


def _read(session: Session, table: Table, columns: Sequence[ColumnElement[Any]],
          dtypes: Sequence[Any], snapshots: SnapshotTimes, machine_ids: Iterable[int] | None
          ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    if len(snapshots) == 0:
        *values, first, end = to_columns([], (*dtypes, *_SPAN_DTYPES))
    else:
        *values, first, end = _overlapping(session, table, columns, dtypes, snapshots, machine_ids)
    return values, *_spans(snapshots, first, end)


def bid_intervals(session: Session, start: float | None, end: float | None,
                  machine_ids: Iterable[int] | None = None, *,
                  snapshots: SnapshotTimes | None = None) -> BidIntervals:
    """Every bid version that held in a snapshot between ``start`` and ``end``, ordered by
    machine, bid and time. ``snapshots``: ``snapshot_times`` of the range, when already read."""
    snapshots = snapshot_times(session, start, end) if snapshots is None else snapshots
    values, first, last = _read(session, BIDS, _BID_COLUMNS, _BID_DTYPES, snapshots, machine_ids)
    machine_id, bid_id, owner, price, pl, active, currency_id = values
    return BidIntervals(machine_id=machine_id, bid_id=bid_id, price=price, pl=pl, active=active,
                        first=first, last=last, snapshots=snapshots, owner=owner,
                        currency=_currency_codes(session, currency_id),
                        currencies=currency_names(session))


def bid_prices(session: Session, snapshots: SnapshotTimes,
               machine_ids: Iterable[int] | None = None, *, currency: str,
               exclude_owners: Sequence[int] = ()) -> BidPrices:
    """The versions of the bids in ``currency`` of owners other than ``exclude_owners`` that held
    in one of ``snapshots``, ordered as in ``bid_intervals``. Two columns fewer than
    ``bid_intervals``: a backtest reads millions of bid versions, and the driver's Python object
    per value costs more than anything else of it."""
    c = BIDS.c
    where = (c.currency_id.in_(select(Currency.id).where(Currency.name == currency)),
             c.owner.not_in([int(u) for u in exclude_owners]))
    dtypes = (np.int64, np.int64, np.float64, np.float64, bool)
    if len(snapshots) == 0:
        *values, first, end = to_columns([], (*dtypes, *_SPAN_DTYPES))
    else:
        *values, first, end = _overlapping(session, BIDS, (c.machine_id, c.bid_id, c.price, c.pl,
                                                           c.active), dtypes, snapshots,
                                           machine_ids, where)
    return BidPrices(*values, *_spans(snapshots, first, end))


def state_intervals(session: Session, start: float | None, end: float | None,
                    machine_ids: Iterable[int] | None = None, *,
                    snapshots: SnapshotTimes | None = None) -> StateIntervals:
    """Every machine state version that held in a snapshot between ``start`` and ``end``
    (``snapshots``: as in ``bid_intervals``)."""
    snapshots = snapshot_times(session, start, end) if snapshots is None else snapshots
    (machine_id, *values), first, last = _read(session, STATES, _STATE_COLUMNS, _STATE_DTYPES,
                                               snapshots, machine_ids)
    return StateIntervals(*values, snapshots=snapshots, machine_id=machine_id, first=first,
                          last=last)


def fact_intervals(session: Session, start: float | None, end: float | None,
                   machine_ids: Iterable[int] | None = None, *,
                   snapshots: SnapshotTimes | None = None) -> FactIntervals:
    """Every facts version valid in a snapshot between ``start`` and ``end`` (``snapshots``: as
    in ``bid_intervals``)."""
    snapshots = snapshot_times(session, start, end) if snapshots is None else snapshots
    values, first, last = _read(session, FACTS, _FACT_COLUMNS, _FACT_DTYPES, snapshots,
                                machine_ids)
    return FactIntervals(snapshots, *values, first, last)


@dataclass(frozen=True, slots=True)
class MachineHistory(StateColumns):
    """One machine, snapshot by snapshot, over the snapshots in which it was listed: its state
    columns (length n), and its bids in CSR form (``bid_start[i]:bid_start[i+1]`` are the bids of
    snapshot ``i``; bid columns have length m), named as in ``MarketFrame``."""

    machine_id: int
    snapshot_id: np.ndarray
    """int64 (n)"""
    time: np.ndarray
    """int64 (n): snapshot time, UNIX seconds"""
    bid_start: np.ndarray
    """int64 (n + 1)"""
    bid_id: np.ndarray
    """int64 (m)"""
    bid_owner: np.ndarray
    """int64 (m)"""
    bid_price: np.ndarray
    """float64 (m)"""
    bid_pl: np.ndarray
    """float64 (m)"""
    bid_active: np.ndarray
    """bool (m)"""
    bid_currency: np.ndarray
    """int16 (m): index into ``currencies``"""
    currencies: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.snapshot_id)


def machine_history(session: Session, machine_id: int, start: float | None = None,
                    end: float | None = None) -> MachineHistory:
    """One machine's states and bids in every snapshot between ``start`` and ``end`` that lists it."""
    snapshots = snapshot_times(session, start, end)
    states, s_first, s_last = _read(session, STATES, _STATE_COLUMNS[1:], _STATE_DTYPES[1:],
                                    snapshots, [machine_id])
    version, index = expand(s_first, s_last)
    position = np.full(len(snapshots), -1, dtype=np.int64)
    position[index] = np.arange(len(index), dtype=np.int64)

    bids, b_first, b_last = _read(session, BIDS, _BID_COLUMNS[1:], _BID_DTYPES[1:], snapshots,
                                  [machine_id])
    bid_version, bid_index = expand(b_first, b_last)
    bid_row = position[bid_index]
    order = np.lexsort((bids[0][bid_version], bid_row))  # by snapshot, then bid id
    bid_version, bid_row = bid_version[order], bid_row[order]
    bid_start = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(np.bincount(bid_row, minlength=len(index)), out=bid_start[1:])
    bid_id, owner, price, pl, active, currency_id = (column[bid_version] for column in bids)
    return MachineHistory(
        *(column[version] for column in states), machine_id=int(machine_id),
        snapshot_id=snapshots.id[index], time=snapshots.time[index], bid_start=bid_start,
        bid_id=bid_id, bid_owner=owner, bid_price=price, bid_pl=pl, bid_active=active,
        bid_currency=_currency_codes(session, currency_id), currencies=currency_names(session))

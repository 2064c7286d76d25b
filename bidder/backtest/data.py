"""Recorded history, loaded once into per-server event streams on one tick grid.

The ticks are the GigaSPOT snapshot times (or, for a spot-only recording, a regular grid over the
spot polls). Only *candidate* servers are kept: those whose hardware and place ever match a target
of their market (``bidder.view.static_match``), plus the servers of given starting orders.

Per market three ``EventStream``s hold what the replay needs:

- ``facts``: what a server is (GPUs, model, country, power-limit range; spot: also reliability
  and ``rented`` from the marketplace listing);
- ``state``: whether it can be won now and at what floor (online, rentable, working, reliability,
  energy price, floor per currency); a server that leaves the snapshot goes offline;
- ``rivals``: the best *rival* bid, the only one that decides who wins and what winning costs:
  the highest allocation score at or above the floor (ties to the lower id, as
  ``bidder.allocation.winning_bids``), with its price, power limit, id, first tick (a bid seen
  before our order was created beats it at an equal score) and highest recorded price.

Our own recorded bids (``owner`` = a recorded ``my_user_id``; spot offers marked ``my``) are not
rivals: the backtest puts its own orders in their place.

Loading is numpy from one read per table on: the best rival is found per span of ticks in which
a server's bids and floor stand still (``_best_rivals``), not per tick, and from a SQLite file a
forked process reads and reduces half of the GigaSPOT candidates meanwhile (``_parts``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from bidder.allocation import bid_scores, power_cost_usd_per_day
from bidder.backtest.events import EventStream
from bidder.config import CLORE, TargetConfig
from bidder.status import fmt_utc
from bidder.view import static_match
from storage.arrays import expand, to_columns
from bidder.backtest.regrid import regrid_market, tick_map
from storage.bulk import fetch_rows
from storage.db import open_database, sqlite_path
from storage.frames import MarketFrame, usd_per_unit
from storage.history import (
    BidPrices,
    SnapshotTimes,
    StateIntervals,
    bid_prices,
    fact_intervals,
    snapshot_times,
    state_intervals,
)
from storage.market_views import SPOT_MAX_AGE
from storage.models import (
    CurrencyRates,
    GigaspotSnapshot,
    MarketplaceListing,
    MarketplaceServer,
    SpotOffer,
    SpotOfferCurrency,
    SpotPoll,
)

CHUNK_CELLS = 1_000_000
"""Entries expanded at once, to bound memory: (bid version, span) pairs while finding the best
rivals, ticks x servers in the oracle."""
MAX_SQL_IDS = 20_000
"""Above this many candidates, history is read for every server and filtered here."""
PARALLEL_READ_MIN = 64
"""From this many GigaSPOT candidates, two processes load their history (see ``_parts``)."""
RANK_TOLERANCE = 1e-9
"""Relative to the size of the scores: a rival this close to a span's best bid at either end of
the span's CLORE rates is ranked tick by tick (far beyond rounding error)."""
FLOOR = "floor:"
"""State columns ``floor:<currency>`` hold each server's floor in that currency."""
LISTED_FLOOR = "listed_floor:"
"""Spot fact columns ``listed_floor:<currency>``: the floor the ``marketplace`` listing states
(the watch list's candidates are picked by it; a poll's floor may differ)."""
OURS = "ours"
"""Spot state column: the server's poll saw an offer of ours. The listing's ``rented`` does not
count there, as in the live frame (``storage.market_views.spot_frame``)."""
IDLE = "idle"
"""Spot state column: the server's poll saw offers waiting and none running (rented on demand:
the live engine keeps every spot target away, ``bidder.engine.idle_spot_servers``)."""


class HistoryError(ValueError):
    """The recorded history cannot be replayed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class WinVersions:
    """Recorded winning rival bids (``active``), one entry per bid version, for ``recent_wins``."""

    row: np.ndarray
    first: np.ndarray
    """int64: first tick"""
    last: np.ndarray
    """int64: last tick (inclusive)"""
    price_per_gpu: np.ndarray
    """float64: per GPU-day (the server's latest GPU count)"""


@dataclass(frozen=True, slots=True)
class MarketHistory:
    market: str
    server_id: np.ndarray
    """int64 (n): the candidate servers, sorted"""
    facts: EventStream
    state: EventStream
    rivals: EventStream
    wins: WinVersions

    @property
    def n_servers(self) -> int:
        return len(self.server_id)

    def rows_of(self, server_ids: Iterable[int]) -> np.ndarray:
        """Rows of the given servers (-1 where not a candidate)."""
        ids = np.asarray(list(server_ids), dtype=np.int64)
        pos = np.clip(np.searchsorted(self.server_id, ids), 0, max(self.n_servers - 1, 0))
        found = (self.server_id[pos] == ids) if self.n_servers else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)


@dataclass(frozen=True, slots=True)
class History:
    time: np.ndarray
    """float64 (T): tick times, UNIX seconds"""
    clore_usd: np.ndarray
    """float64 (T): USD per CLORE (snapshot's ``clore_price``, else the spot rates); NaN unknown"""
    rates: tuple[Mapping[str, float], ...]
    """Distinct ``currency_rates_in_usd`` recorded; ``rates_index`` picks one per tick."""
    rates_index: np.ndarray
    """int64 (T): index into ``rates``, -1 before the first"""
    markets: Mapping[str, MarketHistory] = field(default_factory=dict)
    my_user_ids: tuple[int, ...] = ()

    @property
    def n_ticks(self) -> int:
        return len(self.time)

    def rates_at(self, tick: int) -> Mapping[str, float]:
        k = int(self.rates_index[tick])
        return self.rates[k] if k >= 0 else {}


# --- loading ------------------------------------------------------------------------------------


def load_history(session: Session, targets: Sequence[TargetConfig], *, allocation: str,
                 start: float | None = None, end: float | None = None,
                 grid_interval: float = 60.0,
                 extra_servers: Mapping[str, Iterable[int]] | None = None,
                 extra_times: Iterable[float] | None = None,
                 clore_usd: float | None = None) -> History:
    """The history the ``targets`` need between ``start`` and ``end`` (inclusive, UNIX seconds).

    ``allocation`` is the GigaSPOT rule the best rival is chosen by. ``grid_interval`` spaces the
    ticks of a recording without GigaSPOT snapshots. ``extra_servers`` (market -> ids) are kept as
    candidates whatever they are (servers of starting orders). ``extra_times`` are ticks added
    to the grid (within the range), e.g. the moments a bot run's cycles saw spot polls, so a
    replay can see exactly what they saw. ``clore_usd`` (USD per CLORE) fills the ticks where
    none was recorded (imported CDN files carry no rate). Raises ``HistoryError`` when nothing was
    recorded in the range.
    """
    extra = {m: set(map(int, ids)) for m, ids in (extra_servers or {}).items()}
    spot_targets = [t for t in targets if t.market == "spot"]
    spot_currencies = sorted({t.currency for t in spot_targets})
    if len(spot_currencies) > 1:
        # one best rival per server, ranked in one currency: offers in several would be compared
        # unconverted, a silently wrong price to beat
        raise HistoryError(
            f"spot targets in more than one order currency ({', '.join(spot_currencies)}) cannot "
            "be replayed together: backtest them one currency at a time (--target NAME)")
    snaps = snapshot_times(session, start, end)
    giga_targets = [t for t in targets if t.market == "gigaspot"]
    polls = _spot_polls(session, start, end) if spot_targets else None
    snap_time = snaps.time.astype(np.float64)
    if len(snaps):
        time, clore = snap_time, snaps.clore_usd.astype(np.float64)
    elif polls is not None and len(polls.time):
        first = polls.time[polls.time >= (start if start is not None else -np.inf)]
        lo = float(first.min()) if len(first) else float(polls.time.min())
        hi = float(polls.time.max()) if end is None else min(float(end), float(polls.time.max()))
        time = np.arange(lo, hi + 1e-9, grid_interval, dtype=np.float64)
        clore = np.full(len(time), np.nan)
    else:
        raise HistoryError(f"no GigaSPOT snapshots{' or spot polls' if spot_targets else ''} "
                           f"recorded {_range_text(start, end)}")
    if len(time) == 0:
        raise HistoryError(f"no ticks {_range_text(start, end)}")
    if extra_times is not None:
        added = np.asarray(sorted(extra_times), dtype=np.float64)
        added = added[(added >= time[0]) & (added <= (time[-1] if end is None else end))]
        grid = np.union1d(time, added)
        clore = clore[np.searchsorted(time, grid, side="right") - 1]
        time = grid

    rates, rates_index = _rates(session, time)
    if len(snaps) == 0 or np.isnan(clore).any():  # fill from the spot rates where unknown
        spot_clore = np.array([rates[k].get(CLORE, np.nan) if k >= 0 else np.nan
                               for k in rates_index])
        clore = np.where(np.isnan(clore), spot_clore, clore)
    if clore_usd is not None:
        clore = np.where(np.isnan(clore), clore_usd, clore)
    my_ids = tuple(sorted({int(u) for u in snaps.my_user_id if u >= 0}))
    markets: dict[str, MarketHistory] = {}
    if giga_targets:
        if not len(snaps):
            raise HistoryError(f"no GigaSPOT snapshots recorded {_range_text(start, end)}")
        # built on the snapshots' own ticks, then spread over the finer grid, if any
        where = tick_map(snap_time, time)
        giga = _gigaspot(session, snaps, snap_time, clore[where], giga_targets, allocation,
                         my_ids, extra.get("gigaspot", set()))
        markets["gigaspot"] = giga if len(time) == len(snap_time) else \
            regrid_market(giga, where, len(time))
    if spot_targets:
        assert polls is not None
        markets["spot"] = _spot(session, polls, time, spot_targets, extra.get("spot", set()))
    return History(time, clore, rates, rates_index, markets, my_ids)


def _range_text(start: float | None, end: float | None) -> str:
    """The period asked for, as a person reads it (UTC), not UNIX seconds."""
    if start is None and end is None:
        return "in the database"
    return f"between {fmt_utc(start) if start is not None else 'the beginning'} and " \
           f"{fmt_utc(end) if end is not None else 'the end'}"


def _rates(session: Session, time: np.ndarray) -> tuple[tuple[Mapping[str, float], ...], np.ndarray]:
    """The rates rows up to the last of ``time`` and, per time, the index of the one last seen at
    or before it (-1: none). Ordered by time, not id: an import of older polls adds older rows
    after newer ones, and the search needs the times sorted."""
    rows = session.execute(select(CurrencyRates.first_seen, CurrencyRates.rates)
                           .where(CurrencyRates.first_seen <= float(time[-1]))
                           .order_by(CurrencyRates.first_seen, CurrencyRates.id)).all()
    table = tuple({str(k): float(v) for k, v in r.rates.items()} for r in rows)
    seen = np.array([r.first_seen for r in rows], dtype=np.float64)
    return table, np.searchsorted(seen, time, side="right").astype(np.int64) - 1


def facts_frame(market: str, server_id: np.ndarray, gpus: np.ndarray, model: np.ndarray,
                 country: np.ndarray) -> MarketFrame:
    """A frame of server facts only, for ``static_match``."""
    n = len(server_id)
    nan, false = np.full(n, np.nan), np.zeros(n, dtype=bool)
    return MarketFrame(market=market, time=0.0, clore_usd=np.nan, rates_usd={},
                       server_id=server_id, gpus=gpus, gpu_model=model, country=country,
                       reliability=nan, online=false, rentable=false, working_properly=false,
                       energy_price=nan, pl_min=nan, pl_max=nan, observed_at=nan, floors={},
                       bid_start=np.zeros(n + 1, dtype=np.int64), bid_id=np.empty(0, np.int64),
                       bid_owner=np.empty(0, np.int64), bid_price=np.empty(0),
                       bid_pl=np.empty(0), bid_active=np.empty(0, bool),
                       bid_mine=np.empty(0, bool))


def _candidates(frame: MarketFrame, targets: Sequence[TargetConfig], extra: set[int]) -> np.ndarray:
    """Sorted ids of servers that match a target in some version, plus ``extra``."""
    match = np.zeros(frame.n_servers, dtype=bool)
    for target in targets:
        match |= static_match(frame, target)
    return np.union1d(frame.server_id[match], np.fromiter(extra, np.int64, len(extra)))


def _row_of(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each key in sorted ``ids``; -1 when absent."""
    if not len(ids):
        return np.full(len(keys), -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(ids, keys), 0, len(ids) - 1)
    return np.where(ids[pos] == keys, pos, -1).astype(np.int64)


def _per_key(keys: np.ndarray, values: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """For each entry, ``reduce`` (``np.minimum``/``np.maximum``) of ``values`` over every entry
    with the same key."""
    if not len(keys):
        return values.copy()
    order = np.argsort(keys, kind="stable")
    starts = _run_starts(keys[order])
    reduced = reduce.reduceat(values[order], starts)
    out = np.empty_like(values)
    out[order] = np.repeat(reduced, np.diff(np.append(starts, len(keys))))
    return out


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal keys begins (non-empty sorted input). Sorting and taking the
    starts beats ``np.unique``, which hashes int64 keys slowly in recent numpy."""
    return np.flatnonzero(np.append(True, sorted_keys[1:] != sorted_keys[:-1]))


def _empty_rival_initial(n: int) -> dict[str, np.ndarray]:
    return {"price": np.full(n, np.nan), "pl": np.full(n, np.nan),
            "bid_id": np.full(n, -1, dtype=np.int64), "birth": np.zeros(n, dtype=np.int64),
            "cap_hint": np.full(n, np.nan)}


def _offline_values(k: int, floors: Iterable[str]) -> dict[str, np.ndarray]:
    """State values of a server that cannot be won (gone from the snapshot, stale)."""
    out = {"online": np.zeros(k, bool), "rentable": np.zeros(k, bool),
           "working_properly": np.zeros(k, bool)}
    out.update({f"{FLOOR}{c}": np.full(k, np.nan) for c in floors})
    return out


# --- GigaSPOT -----------------------------------------------------------------------------------


def _gigaspot(session: Session, snaps: SnapshotTimes, time: np.ndarray, clore: np.ndarray,
              targets: Sequence[TargetConfig], allocation: str, my_ids: tuple[int, ...],
              extra: set[int]) -> MarketHistory:
    n_ticks = len(time)
    facts = fact_intervals(session, None, None, snapshots=snaps)
    ids = _candidates(facts_frame("gigaspot", facts.machine_id, facts.gpu_count, facts.gpu_model,
                                   facts.country), targets, extra)
    n = len(ids)
    f_row = _row_of(ids, facts.machine_id)
    keep = f_row >= 0
    fact_stream = EventStream.build(
        n_ticks, facts.first[keep], f_row[keep],
        {"gpus": facts.gpu_count[keep], "gpu_model": facts.gpu_model[keep],
         "country": facts.country[keep], "pl_min": facts.pl_min[keep],
         "pl_max": facts.pl_max[keep]},
        {"gpus": np.zeros(n, np.int32), "gpu_model": np.full(n, "", dtype=object),
         "country": np.full(n, "", dtype=object), "pl_min": np.full(n, np.nan),
         "pl_max": np.full(n, np.nan)})
    job = _Job(snaps, ids, n <= MAX_SQL_IDS, fact_stream, clore, allocation, my_ids)
    parts = _parts(session, job)
    states = parts[0].states if len(parts) == 1 else \
        _joined_states(parts[0].states, parts[1].states)
    rivals = EventStream.build(n_ticks, np.concatenate([p.rival_tick for p in parts]),
                               np.concatenate([p.rival_row for p in parts]),
                               {c: np.concatenate([p.rivals[c] for p in parts])
                                for c in parts[0].rivals}, _empty_rival_initial(n))
    wins = WinVersions(*(np.concatenate([getattr(p.wins, f.name) for p in parts])
                         for f in fields(WinVersions)))
    return MarketHistory("gigaspot", ids, fact_stream, _state_stream(states, ids, n_ticks),
                         rivals, wins)


@dataclass(frozen=True, slots=True)
class _Job:
    """What reading and reducing the history of some candidate rows needs."""

    snapshots: SnapshotTimes
    """The range's snapshots (its ticks)"""
    ids: np.ndarray
    """Every candidate, sorted"""
    by_id: bool
    """Read only the candidates' rows (else every machine's, filtered here)"""
    facts: EventStream
    clore: np.ndarray
    allocation: str
    my_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Part:
    """The history of the candidate rows of one ``_Job``: states as read, best-rival changes
    (as ``EventStream.build`` takes them) and recorded wins."""

    states: StateIntervals
    rival_tick: np.ndarray
    rival_row: np.ndarray
    rivals: dict[str, np.ndarray]
    wins: WinVersions


def _parts(session: Session, job: _Job) -> list[_Part]:
    """The history of every candidate, in one part or two. Reading the states and bids costs more
    than anything else in a load (the driver makes a Python tuple of every row), and the best
    rivals come next, so from a SQLite file a forked process reads and reduces the upper half of
    the candidates while this one does the lower half. A machine's rows depend on nothing of
    another machine's (bid ids name one machine's bids), and both read the same snapshot range,
    so the two parts make what one would."""
    n = len(job.ids)
    url = session.get_bind().url.render_as_string(hide_password=False)
    if not job.by_id or n < PARALLEL_READ_MIN or sqlite_path(url) is None \
            or "fork" not in mp.get_all_start_methods():
        return [_part(session, job, 0, n)]
    half = n // 2
    with mp.get_context("fork").Pool(1) as pool:
        upper = pool.apply_async(_part_of_file, (url, job, half, n))
        lower = _part(session, job, 0, half)
        return [lower, upper.get()]


def _part_of_file(url: str, job: _Job, lo: int, hi: int) -> _Part:
    with open_database(url, writer=False) as db, db.sessions() as session:
        return _part(session, job, lo, hi)


def _part(session: Session, job: _Job, lo: int, hi: int) -> _Part:
    """The history of candidate rows ``lo:hi``."""
    n_ticks = len(job.clore)
    query_ids = job.ids[lo:hi] if job.by_id else None
    states = state_intervals(session, None, None, query_ids, snapshots=job.snapshots)
    state_stream = _state_stream(states, job.ids, n_ticks)
    bids, b_row = _rival_bids(session, job, query_ids)
    versions = _Versions(row=b_row, first=bids.first, last=bids.last, price=bids.price,
                         pl=bids.pl, bid_id=bids.bid_id,
                         birth=_per_key(bids.bid_id, bids.first, np.minimum),
                         cap_hint=_per_key(bids.bid_id, bids.price, np.maximum))
    tick, row, values = _best_rivals(versions, n_ticks, lo, hi, state_stream, job.facts,
                                     job.clore, job.allocation)
    gpus_now = _final(job.facts)["gpus"]
    won = bids.active
    wins = WinVersions(b_row[won], bids.first[won], bids.last[won],
                       bids.price[won] / np.maximum(gpus_now[b_row[won]], 1))
    return _Part(states, tick, row, values, wins)


def _rival_bids(session: Session, job: _Job,
                query_ids: np.ndarray | None) -> tuple[BidPrices, np.ndarray]:
    """The CLORE bid versions of others than us on candidate machines, and each one's row."""
    bids = bid_prices(session, job.snapshots, query_ids, currency=CLORE,
                      exclude_owners=job.my_ids)
    row = _row_of(job.ids, bids.machine_id)
    if query_ids is None:  # every machine was read
        keep = row >= 0
        bids = BidPrices(*(getattr(bids, f.name)[keep] for f in fields(BidPrices)))
        row = row[keep]
    return bids, row


def _state_stream(states: StateIntervals, ids: np.ndarray, n_ticks: int) -> EventStream:
    """Machine states on the tick grid; a machine that leaves the snapshot cannot be won."""
    n = len(ids)
    s_row = _row_of(ids, states.machine_id)
    keep = s_row >= 0
    k = int(keep.sum())
    listed = {"online": states.online[keep],
              "rentable": (states.max_rental_length[keep] > 0) & ~states.on_demand_rented[keep],
              "working_properly": states.working_properly[keep],
              "reliability": states.reliability[keep], "energy_price": states.energy_price[keep],
              f"{FLOOR}{CLORE}": states.min_bid[keep]}
    gone = {**_offline_values(k, [CLORE]), "reliability": np.full(k, np.nan),
            "energy_price": np.full(k, np.nan)}
    return EventStream.build(
        n_ticks, np.concatenate([states.last[keep] + 1, states.first[keep]]),
        np.concatenate([s_row[keep], s_row[keep]]),
        {c: np.concatenate([gone[c], listed[c]]) for c in listed},
        {**_offline_values(n, [CLORE]), "reliability": np.full(n, np.nan),
         "energy_price": np.full(n, np.nan)})


def _joined_states(lower: StateIntervals, upper: StateIntervals) -> StateIntervals:
    """Two reads of disjoint machines as one."""
    return StateIntervals(snapshots=lower.snapshots, **{
        f.name: np.concatenate([getattr(lower, f.name), getattr(upper, f.name)])
        for f in fields(StateIntervals) if f.name != "snapshots"})


def _final(stream: EventStream) -> dict[str, np.ndarray]:
    """Every column as it is after the last tick."""
    n = len(next(iter(stream.initial.values())))
    return stream.at(np.arange(n), np.full(n, stream.n_ticks - 1))


@dataclass(frozen=True, slots=True)
class _Versions:
    """Rival bid versions on candidate rows (sorted by row), with inclusive tick spans."""

    row: np.ndarray
    first: np.ndarray
    last: np.ndarray
    price: np.ndarray
    pl: np.ndarray
    bid_id: np.ndarray
    birth: np.ndarray
    cap_hint: np.ndarray


@dataclass(frozen=True, slots=True)
class _Segments:
    """Spans of ticks of one server in which the same rival versions compete under the same floor,
    energy price, GPU count and known-ness of the CLORE rate; sorted by (row, start)."""

    key: np.ndarray
    """int64: ``row x n_ticks + start``"""
    row: np.ndarray
    start: np.ndarray
    end: np.ndarray
    """int64: exclusive"""
    floor: np.ndarray
    energy: np.ndarray
    gpus: np.ndarray
    clore_lo: np.ndarray
    """float64: the lowest CLORE rate in the span (NaN: unknown throughout)"""
    clore_hi: np.ndarray

    @classmethod
    def build(cls, v: _Versions, n_ticks: int, lo: int, hi: int, state: EventStream,
              facts: EventStream, clore: np.ndarray) -> _Segments:
        """The segments of rows ``lo:hi`` (``v``: their versions)."""
        rows = np.arange(lo, hi, dtype=np.int64)
        unknown = np.isnan(clore)
        toggles = np.flatnonzero(unknown[1:] != unknown[:-1]) + 1
        ends = v.last + 1
        events = [(s.row, s.ticks()) for s in (state, facts)]
        key = np.sort(np.concatenate([
            rows * n_ticks, (rows[:, None] * n_ticks + toggles).ravel(),
            v.row * n_ticks + v.first, (v.row * n_ticks + ends)[ends < n_ticks],
            *((row * n_ticks + tick)[(row >= lo) & (row < hi)] for row, tick in events)]))
        key = key[_run_starts(key)]
        row, start = np.divmod(key, n_ticks)
        last_of_row = np.append(row[1:] != row[:-1], True)
        end = np.where(last_of_row, n_ticks, np.append(start[1:], n_ticks))
        at_start = state.at(row, start, (f"{FLOOR}{CLORE}", "energy_price"))
        # per span, min and max of the rate: reductions over [start, end) (every other result)
        bounds = np.ravel(np.column_stack([start, end]))
        padded = np.append(clore, 0.0)
        return cls(key, row, start, end, at_start[f"{FLOOR}{CLORE}"], at_start["energy_price"],
                   facts.at(row, start, ("gpus",))["gpus"],
                   np.minimum.reduceat(padded, bounds)[::2],
                   np.maximum.reduceat(padded, bounds)[::2])

    def of(self, v: _Versions, n_ticks: int) -> tuple[np.ndarray, np.ndarray]:
        """Per version, the range [lo, hi) of the segments it spans. (A version that lasts to the
        last tick ends where the next row's segments begin: ``(row, n_ticks)`` is that key.)"""
        return (np.searchsorted(self.key, v.row * n_ticks + v.first),
                np.searchsorted(self.key, v.row * n_ticks + v.last + 1))


def _rank(allocation: str, price: np.ndarray, pl: np.ndarray, gpus: np.ndarray,
          energy: np.ndarray, clore: np.ndarray) -> np.ndarray:
    """A bid's allocation score, or its price where the score is unknown."""
    score = bid_scores(allocation, price, pl, gpus, energy, clore)  # type: ignore[arg-type]
    return np.where(np.isnan(score), price, score)


def _best_of_groups(group: np.ndarray, n_groups: int, rank: np.ndarray,
                    bid_id: np.ndarray) -> np.ndarray:
    """Per group, the index of its best entry: highest ``rank``, ties to the lowest ``bid_id``
    (``bidder.allocation.winning_bids``' rule; the first entry if a bid id repeats); -1 when
    the group has no entry."""
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, group, rank)
    top = rank == best[group]
    lowest = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(lowest, group[top], bid_id[top])
    win = np.flatnonzero(top & (bid_id == lowest[group]))[::-1]
    out = np.full(n_groups, -1, dtype=np.int64)
    out[group[win]] = win
    return out


def _best_rivals(v: _Versions, n_ticks: int, lo: int, hi: int, state: EventStream,
                 facts: EventStream, clore: np.ndarray, allocation: str
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The best rival of candidate rows ``lo:hi`` at every tick, as its changes: (tick, row,
    columns) of each, for the best-rival ``EventStream``.

    Within one of a server's ``_Segments`` each competing bid's rank is an affine function of the
    CLORE rate (constant under ``highest_price`` or an unknown rate), so the bid that wins at the
    span's lowest and at its highest rate wins throughout. Spans where another bid comes within
    ``RANK_TOLERANCE`` of the winner at either end (rounding could matter) are ranked tick by
    tick instead. This touches every (version, span) pair once instead of every bid at every tick.
    Rows are taken in blocks of about ``CHUNK_CELLS`` pairs to bound memory.
    """
    if hi == lo:
        return np.empty(0, np.int64), np.empty(0, np.int64), _empty_rival_initial(0)
    seg = _Segments.build(v, n_ticks, lo, hi, state, facts, clore)
    first, last = seg.of(v, n_ticks)
    per_row = np.bincount(v.row - lo, weights=last - first, minlength=hi - lo)
    rows, ticks, versions = ([np.empty(0, np.int64)] for _ in range(3))
    for r0, r1 in _row_blocks(per_row, CHUNK_CELLS):
        va, vb = np.searchsorted(v.row, [lo + r0, lo + r1])
        sa, sb = np.searchsorted(seg.row, [lo + r0, lo + r1])
        pair, at = expand(first[va:vb], last[va:vb] - 1)
        entry_seg, entry_tick, entry_version = _winners(v, seg, pair + va, at, sa, sb, allocation,
                                                        clore)
        rows.append(seg.row[entry_seg])
        ticks.append(entry_tick)
        versions.append(entry_version)
    return _rival_changes(v, np.concatenate(rows), np.concatenate(ticks),
                          np.concatenate(versions))


def _row_blocks(weight: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) weighing at most ``limit`` each (or one row)."""
    blocks, first, total = [], 0, 0.0
    for r, w in enumerate(weight.tolist()):
        if r > first and total + w > limit:
            blocks.append((first, r))
            first, total = r, 0.0
        total += w
    blocks.append((first, len(weight)))
    return blocks


def _winners(v: _Versions, seg: _Segments, version: np.ndarray, at: np.ndarray, sa: int, sb: int,
             allocation: str, clore: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The winning version (-1: none) of segments ``sa:sb`` from their (``version``, segment
    ``at``) pairs: one entry per segment, or one per tick for the spans ranked tick by tick.
    Returns (segment, tick, version) per entry, in (row, tick) order."""
    price = v.price[version]
    ok = price >= np.nan_to_num(seg.floor[at], nan=np.inf)
    version, at, price = version[ok], at[ok], price[ok]
    group, pl, bid_id = at - sa, v.pl[version], v.bid_id[version]
    gpus, energy = seg.gpus[at], seg.energy[at]
    rank_lo = _rank(allocation, price, pl, gpus, energy, seg.clore_lo[at])
    best = _best_of_groups(group, sb - sa, rank_lo, bid_id)
    by_tick = np.zeros(sb - sa, dtype=bool)
    if allocation != "highest_price":
        rank_hi = _rank(allocation, price, pl, gpus, energy, seg.clore_hi[at])
        by_tick[_best_of_groups(group, sb - sa, rank_hi, bid_id) != best] = True
        w = best[group]
        size = np.abs(price) * (1.0 + np.nan_to_num(seg.clore_hi[at])) + \
            np.nan_to_num(np.abs(power_cost_usd_per_day(pl, gpus, energy)))
        tol = RANK_TOLERANCE * (size + size[w])
        tie = (price == price[w]) & (pl == pl[w])  # the same score at every rate
        close = ~tie & ((rank_lo[w] - rank_lo <= tol) | (rank_hi[w] - rank_hi <= tol))
        by_tick[group[close]] = True
        by_tick &= seg.clore_hi[sa:sb] > seg.clore_lo[sa:sb]  # the rate moves within the span

    start = seg.start[sa:sb]
    count = np.where(by_tick, seg.end[sa:sb] - start, 1)
    entry_seg, entry_tick = expand(start, start + count - 1)
    entry_version = np.append(version, -1)[best][entry_seg]  # best -1 picks the appended -1
    if by_tick.any():  # one cell per (segment, tick) of those spans
        pick = np.flatnonzero(by_tick[group])
        pair, tick = expand(start[group[pick]], seg.end[at[pick]] - 1)
        pair = pick[pair]
        cell = (np.cumsum(count) - count)[group[pair]] + tick - start[group[pair]]
        in_cell = _best_of_groups(cell, len(entry_seg), _rank(
            allocation, price[pair], pl[pair], gpus[pair], energy[pair], clore[tick]),
            bid_id[pair])
        dense = by_tick[entry_seg]
        entry_version[dense] = np.append(version[pair], -1)[in_cell[dense]]
    return entry_seg + sa, entry_tick, entry_version


def _rival_changes(v: _Versions, row: np.ndarray, tick: np.ndarray, version: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Best-rival events from the winning ``version`` (-1: none) of each (``row``, ``tick``)
    entry, in (row, tick) order: one wherever the price, power limit or bid id changes."""
    none = _empty_rival_initial(1)
    values = {c: np.append(column, none[c])[version] for c, column in  # -1: none
              (("price", v.price), ("pl", v.pl), ("bid_id", v.bid_id), ("birth", v.birth),
               ("cap_hint", v.cap_hint))}
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    changed = np.zeros(len(row), dtype=bool)
    for c in ("price", "pl", "bid_id"):
        now = values[c]
        before = np.where(first, none[c][0], np.roll(now, 1))
        same = now == before
        if now.dtype.kind == "f":
            same |= np.isnan(now) & np.isnan(before)
        changed |= ~same
    return tick[changed], row[changed], {c: x[changed] for c, x in values.items()}


# --- spot ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Polls:
    id: np.ndarray
    server_id: np.ndarray
    time: np.ndarray
    online: np.ndarray
    open: np.ndarray
    """exists, public and rentable for some time (mrl)"""
    floors: list[dict[str, float]]


def _spot_polls(session: Session, start: float | None, end: float | None) -> _Polls:
    p = SpotPoll
    query = select(p.id, p.server_id, p.polled_at, p.market_exists, p.online, p.visibility, p.mrl,
                   p.min_pricing).order_by(p.polled_at, p.id)
    if start is not None:
        query = query.where(p.polled_at >= start - SPOT_MAX_AGE)
    if end is not None:
        query = query.where(p.polled_at <= end)
    rows = fetch_rows(session.connection(), query)
    poll_id, server_id, time = to_columns([r[:3] for r in rows], (np.int64, np.int64, np.float64))
    exists = np.array([r[3] is None or bool(r[3]) for r in rows], dtype=bool)
    online = np.array([bool(r[4]) for r in rows], dtype=bool) & exists
    is_open = exists & np.array([r[5] == "public" and (r[6] is None or r[6] > 0) for r in rows],
                                dtype=bool)
    floors = [r[7] if isinstance(r[7], dict) else json.loads(r[7] or "{}") for r in rows]
    return _Polls(poll_id, server_id, time, online, is_open, floors)


def _spot(session: Session, polls: _Polls, time: np.ndarray, targets: Sequence[TargetConfig],
          extra: set[int]) -> MarketHistory:
    n_ticks = len(time)
    m = MarketplaceServer
    listed = session.execute(
        select(m.server_id, m.gpu_count, m.gpu_model, m.country, m.reliability, m.rented,
               MarketplaceListing.taken_at, m.spot_floors)
        .join(MarketplaceListing, MarketplaceListing.id == m.first_listing)
        .where(MarketplaceListing.taken_at <= float(time[-1]))
        .order_by(MarketplaceListing.taken_at, m.server_id)).all()
    l_id, l_gpus, l_model, l_cc, l_rel, l_time = to_columns(
        [(r[0], r[1], r[2], r[3], r[4], r[6]) for r in listed],
        (np.int64, np.int32, object, object, np.float64, np.float64))
    l_gpus = np.maximum(l_gpus, 0)
    l_rented = np.array([r[5] is True for r in listed], dtype=bool)
    ids = _candidates(facts_frame("spot", l_id, l_gpus, l_model, l_cc), targets, extra)
    n = len(ids)
    l_row = _row_of(ids, l_id)
    keep = l_row >= 0
    currencies = sorted({t.currency for t in targets})
    # the listing's own floors: the watch list picks its candidates by them
    # (``bidder.watchlist.target_candidates``), and a run waits for one round of those
    listed_floors = {f"{LISTED_FLOOR}{c}": np.array(
        [_listed_floor(r[7], c) for r, k in zip(listed, keep.tolist()) if k], dtype=np.float64)
        for c in currencies}
    fact_stream = EventStream.build(
        n_ticks, np.searchsorted(time, l_time[keep], side="left"), l_row[keep],
        {"gpus": l_gpus[keep], "gpu_model": l_model[keep], "country": l_cc[keep],
         "reliability": l_rel[keep], "rented": l_rented[keep], **listed_floors},
        {"gpus": np.zeros(n, np.int32), "gpu_model": np.full(n, "", dtype=object),
         "country": np.full(n, "", dtype=object), "reliability": np.full(n, np.nan),
         "rented": np.zeros(n, bool), **{c: np.full(n, np.nan) for c in listed_floors}})

    p_row = _row_of(ids, polls.server_id)
    keep = np.flatnonzero(p_row >= 0)
    poll_tick = np.searchsorted(time, polls.time[keep], side="left")
    expiry_tick = np.searchsorted(time, _stale_after(polls.server_id[keep], polls.time[keep]),
                                  side="right")
    k = len(keep)
    fresh = {"online": polls.online[keep], "rentable": polls.open[keep],
             "working_properly": np.ones(k, bool), "observed_at": polls.time[keep],
             OURS: np.isin(polls.id[keep], _polls_with_our_offer(session, polls)),
             IDLE: np.isin(polls.id[keep], _idle_polls(session, polls))}
    fresh.update({f"{FLOOR}{c}": np.array([float(polls.floors[i].get(c, np.nan)) for i in keep])
                  for c in currencies})
    stale = {**_offline_values(k, currencies), "observed_at": np.full(k, np.nan),
             OURS: np.zeros(k, bool), IDLE: np.zeros(k, bool)}
    order = _expiries_and_polls(polls.time[keep])
    state_stream = EventStream.build(
        n_ticks, np.concatenate([expiry_tick, poll_tick])[order],
        np.concatenate([p_row[keep]] * 2)[order],
        {c: np.concatenate([stale[c], fresh[c]])[order] for c in fresh},
        {**_offline_values(n, currencies), "observed_at": np.full(n, np.nan),
         OURS: np.zeros(n, bool), IDLE: np.zeros(n, bool)})
    rivals, wins = _spot_rivals(session, polls, keep, p_row, poll_tick, expiry_tick, n_ticks, n,
                                fact_stream, currencies[0] if len(currencies) == 1 else None)
    return MarketHistory("spot", ids, fact_stream, state_stream, rivals, wins)


def _polls_with_our_offer(session: Session, polls: _Polls) -> np.ndarray:
    """Ids of the polls that saw an offer of ours on their server."""
    if not len(polls.id):
        return np.empty(0, dtype=np.int64)
    o = SpotOffer
    rows = fetch_rows(session.connection(),
                      select(o.poll_id).distinct()
                      .join(SpotPoll, SpotPoll.id == o.poll_id)
                      .where(SpotPoll.polled_at >= float(polls.time.min()),
                             SpotPoll.polled_at <= float(polls.time.max()), o.my.is_(True)))
    return np.array([r[0] for r in rows], dtype=np.int64)


def _idle_polls(session: Session, polls: _Polls) -> np.ndarray:
    """Ids of the polls that saw offers on their server and none of them running."""
    if not len(polls.id):
        return np.empty(0, dtype=np.int64)
    o = SpotOffer
    running = func.max(case((o.active.is_(True), 1), else_=0))
    rows = fetch_rows(session.connection(),
                      select(o.poll_id)
                      .join(SpotPoll, SpotPoll.id == o.poll_id)
                      .where(SpotPoll.polled_at >= float(polls.time.min()),
                             SpotPoll.polled_at <= float(polls.time.max()))
                      .group_by(o.poll_id).having(running == 0))
    return np.array([r[0] for r in rows], dtype=np.int64)


def _listed_floor(floors: Any, currency: str) -> float:
    """A listing entry's spot floor in ``currency`` (NaN when it states none)."""
    if isinstance(floors, str):
        floors = json.loads(floors or "{}")
    value = (floors or {}).get(currency)
    return float(value) if value is not None else np.nan


def _in_currency(session: Session, o_poll: np.ndarray, o_id: np.ndarray, o_bid: np.ndarray,
                 currency: str, since: float) -> np.ndarray:
    """Offer prices in ``currency``: those that state another one converted with the rates of
    their poll's time; +inf where that cannot be done (an unknown price is never cheap: no bid
    of ours beats it)."""
    oc = SpotOfferCurrency
    stated = session.execute(select(oc.poll_id, oc.offer_id, oc.currency, SpotPoll.polled_at)
                             .join(SpotPoll, SpotPoll.id == oc.poll_id)
                             .where(SpotPoll.polled_at >= since, oc.currency != currency)).all()
    if not stated:
        return o_bid
    key = {(int(p), int(o)): (c, float(t)) for p, o, c, t in stated}
    times = np.array(sorted({t for _, t in key.values()}), dtype=np.float64)
    table, index = _rates(session, times)
    at = dict(zip(times.tolist(), index.tolist()))
    out = o_bid.copy()
    for i, (poll, offer) in enumerate(zip(o_poll.tolist(), o_id.tolist())):
        hit = key.get((poll, offer))
        if hit is None:
            continue
        k = at[hit[1]]
        rates = table[k] if k >= 0 else {}
        clore = rates.get(CLORE, np.nan)
        rate, to = usd_per_unit(hit[0], rates, clore), usd_per_unit(currency, rates, clore)
        out[i] = o_bid[i] * rate / to if 0 < rate < np.inf and 0 < to < np.inf else np.inf
    return out


def _expiries_and_polls(polled_at: np.ndarray) -> np.ndarray:
    """The order in which to give the events ``[expiry of each poll..., each poll...]`` so that
    where several land on one tick and server the right one wins (the last given): a newer poll
    over an older poll's expiry, and a poll's own expiry over the poll (the ticks a day or more
    apart there: already stale at the first tick it is seen, as the live frame would drop it)."""
    k = len(polled_at)
    return np.lexsort((np.repeat([1, 0], k), np.concatenate([polled_at, polled_at])))


def _stale_after(server_id: np.ndarray, polled_at: np.ndarray) -> np.ndarray:
    """When each poll goes stale: ``SPOT_MAX_AGE`` after it, unless the server's next poll comes
    sooner (then never)."""
    order = np.lexsort((polled_at, server_id))
    nxt = np.full(len(order), np.inf)
    same = server_id[order][1:] == server_id[order][:-1]
    nxt[:-1] = np.where(same, polled_at[order][1:], np.inf)
    out = np.empty(len(order))
    out[order] = np.where(nxt - polled_at[order] > SPOT_MAX_AGE, polled_at[order] + SPOT_MAX_AGE,
                          np.inf)
    return out


def _spot_rivals(session: Session, polls: _Polls, keep: np.ndarray, p_row: np.ndarray,
                 poll_tick: np.ndarray, expiry_tick: np.ndarray, n_ticks: int, n: int,
                 facts: EventStream, currency: str | None = None) -> tuple[EventStream, WinVersions]:
    """The highest rival offer of each poll (ties to the lower offer id), as rival events.
    Offers that state another currency than ``currency`` (the spot targets' one) are converted
    with the rates recorded at their poll, as the live view does."""
    position = np.full(int(polls.id.max(initial=0)) + 1, -1, dtype=np.int64)
    position[polls.id[keep]] = np.arange(len(keep))
    o = SpotOffer
    lo = float(polls.time.min(initial=0.0))
    offers = fetch_rows(session.connection(),
                        select(o.poll_id, o.offer_id, o.bid, o.active)
                        .join(SpotPoll, SpotPoll.id == o.poll_id)
                        .where(SpotPoll.polled_at >= lo, o.my.is_(False)))
    o_poll, o_id, o_bid, o_active = to_columns(offers, (np.int64, np.int64, np.float64, bool))
    if currency is not None:
        o_bid = _in_currency(session, o_poll, o_id, o_bid, currency, lo)
    ok = o_poll < len(position)
    o_poll, o_id, o_bid, o_active = o_poll[ok], o_id[ok], o_bid[ok], o_active[ok]
    o_pos = position[o_poll]
    ok = o_pos >= 0
    o_pos, o_id, o_bid, o_active = o_pos[ok], o_id[ok], o_bid[ok], o_active[ok]
    o_tick = poll_tick[o_pos]
    birth = _per_key(o_id, o_tick, np.minimum)
    cap_hint = _per_key(o_id, o_bid, np.maximum)
    top = _best_of_groups(o_pos, len(keep), o_bid, o_id)
    top = top[top >= 0]
    k = len(keep)
    best = _empty_rival_initial(k)
    best["price"][o_pos[top]] = o_bid[top]
    best["bid_id"][o_pos[top]] = o_id[top]
    best["birth"][o_pos[top]] = birth[top]
    best["cap_hint"][o_pos[top]] = cap_hint[top]
    none = _empty_rival_initial(k)
    rows = p_row[keep]
    order = _expiries_and_polls(polls.time[keep])
    stream = EventStream.build(n_ticks, np.concatenate([expiry_tick, poll_tick])[order],
                               np.concatenate([rows, rows])[order],
                               {c: np.concatenate([none[c], best[c]])[order] for c in best},
                               _empty_rival_initial(n))
    gpus = np.maximum(_final(facts)["gpus"], 1)
    won = np.flatnonzero(o_active & np.isfinite(o_bid))  # an unconvertible win tells nothing
    win_rows = rows[o_pos[won]]
    win_tick = o_tick[won]
    return stream, WinVersions(win_rows, win_tick, win_tick, o_bid[won] / gpus[win_rows])


def count_recorded(session: Session) -> tuple[int, int]:
    """(GigaSPOT snapshots, spot polls) in the database."""
    return (session.scalar(select(func.count()).select_from(GigaspotSnapshot)) or 0,
            session.scalar(select(func.count()).select_from(SpotPoll)) or 0)

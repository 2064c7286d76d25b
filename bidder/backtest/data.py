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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bidder.allocation import bid_scores
from bidder.backtest.events import EventStream, carry_after
from bidder.config import CLORE, TargetConfig
from bidder.view import static_match
from storage.arrays import expand, to_columns
from storage.bulk import fetch_rows
from storage.frames import MarketFrame
from storage.history import bid_intervals, fact_intervals, snapshot_times, state_intervals
from storage.market_views import SPOT_MAX_AGE
from storage.models import (
    CurrencyRates,
    GigaspotSnapshot,
    MarketplaceListing,
    MarketplaceServer,
    SpotOffer,
    SpotPoll,
)

CHUNK_CELLS = 1_000_000
"""Ticks x servers expanded at once while finding the best rival (bounds memory)."""
MAX_SQL_IDS = 20_000
"""Above this many candidates, history is read for every server and filtered here."""
FLOOR = "floor:"
"""State columns ``floor:<currency>`` hold each server's floor in that currency."""


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
                 extra_servers: Mapping[str, Iterable[int]] | None = None) -> History:
    """The history the ``targets`` need between ``start`` and ``end`` (inclusive, UNIX seconds).

    ``allocation`` is the GigaSPOT rule the best rival is chosen by. ``grid_interval`` spaces the
    ticks of a recording without GigaSPOT snapshots. ``extra_servers`` (market -> ids) are kept as
    candidates whatever they are (servers of starting orders). Raises ``HistoryError`` when
    nothing was recorded in the range.
    """
    extra = {m: set(map(int, ids)) for m, ids in (extra_servers or {}).items()}
    snaps = snapshot_times(session, start, end)
    spot_targets = [t for t in targets if t.market == "spot"]
    giga_targets = [t for t in targets if t.market == "gigaspot"]
    polls = _spot_polls(session, start, end) if spot_targets else None
    if len(snaps):
        time = snaps.time.astype(np.float64)
        clore = snaps.clore_usd.astype(np.float64)
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

    rates, rates_index = _rates(session, time)
    if len(snaps) == 0 or np.isnan(clore).any():  # fill from the spot rates where unknown
        spot_clore = np.array([rates[k].get(CLORE, np.nan) if k >= 0 else np.nan
                               for k in rates_index])
        clore = np.where(np.isnan(clore), spot_clore, clore)
    my_ids = tuple(sorted({int(u) for u in snaps.my_user_id if u >= 0}))
    markets: dict[str, MarketHistory] = {}
    if giga_targets:
        if not len(snaps):
            raise HistoryError(f"no GigaSPOT snapshots recorded {_range_text(start, end)}")
        markets["gigaspot"] = _gigaspot(session, snaps, time, clore, giga_targets, allocation,
                                        my_ids, extra.get("gigaspot", set()), start, end)
    if spot_targets:
        assert polls is not None
        markets["spot"] = _spot(session, polls, time, spot_targets, extra.get("spot", set()))
    return History(time, clore, rates, rates_index, markets, my_ids)


def _range_text(start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return "in the database"
    return f"between {start if start is not None else 'the beginning'} and " \
           f"{end if end is not None else 'the end'}"


def _rates(session: Session, time: np.ndarray) -> tuple[tuple[Mapping[str, float], ...], np.ndarray]:
    rows = session.execute(select(CurrencyRates.first_seen, CurrencyRates.rates)
                           .where(CurrencyRates.first_seen <= float(time[-1]))
                           .order_by(CurrencyRates.id)).all()
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
    _, inverse = np.unique(keys, return_inverse=True)
    out = np.empty(int(inverse.max()) + 1, dtype=values.dtype)
    out[inverse] = values  # any member's value, then the reduction over all of them
    reduce.at(out, inverse, values)
    return out[inverse]


def _best_per_group(group: np.ndarray, rank: np.ndarray, bid_id: np.ndarray) -> np.ndarray:
    """Index of the best entry of each group: highest ``rank``, ties to the lowest ``bid_id``
    (``bidder.allocation.winning_bids``' rule)."""
    order = np.lexsort((bid_id, -rank, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]


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


def _gigaspot(session: Session, snaps, time: np.ndarray, clore: np.ndarray,
              targets: Sequence[TargetConfig], allocation: str, my_ids: tuple[int, ...],
              extra: set[int], start: float | None, end: float | None) -> MarketHistory:
    n_ticks = len(time)
    facts = fact_intervals(session, start, end)
    ids = _candidates(facts_frame("gigaspot", facts.machine_id, facts.gpu_count, facts.gpu_model,
                                   facts.country), targets, extra)
    n = len(ids)
    query_ids = ids if n <= MAX_SQL_IDS else None
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

    states = state_intervals(session, start, end, query_ids)
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
    state_stream = EventStream.build(
        n_ticks, np.concatenate([states.last[keep] + 1, states.first[keep]]),
        np.concatenate([s_row[keep], s_row[keep]]),
        {c: np.concatenate([gone[c], listed[c]]) for c in listed},
        {**_offline_values(n, [CLORE]), "reliability": np.full(n, np.nan),
         "energy_price": np.full(n, np.nan)})

    bids = bid_intervals(session, start, end, query_ids)
    b_row = _row_of(ids, bids.machine_id)
    rival = (b_row >= 0) & ~np.isin(bids.owner, np.array(my_ids, dtype=np.int64))
    rival &= np.array([c == CLORE for c in bids.currencies], dtype=bool)[bids.currency] \
        if len(bids.currencies) else np.zeros(len(b_row), dtype=bool)
    v = np.flatnonzero(rival)
    versions = _Versions(row=b_row[v], first=bids.first[v], last=bids.last[v],
                         price=bids.price[v], pl=bids.pl[v], bid_id=bids.bid_id[v],
                         birth=_per_key(bids.bid_id[v], bids.first[v], np.minimum),
                         cap_hint=_per_key(bids.bid_id[v], bids.price[v], np.maximum))
    rivals = _best_rivals(versions, n_ticks, n, state_stream, fact_stream, clore, allocation)
    gpus_now = _final(fact_stream)["gpus"]
    active = bids.active[v]
    wins = WinVersions(versions.row[active], versions.first[active], versions.last[active],
                       versions.price[active] / np.maximum(gpus_now[versions.row[active]], 1))
    return MarketHistory("gigaspot", ids, fact_stream, state_stream, rivals, wins)


def _final(stream: EventStream) -> dict[str, np.ndarray]:
    columns = stream.current()
    for tick in range(stream.n_ticks):
        stream.apply(tick, columns)
    return columns


@dataclass(frozen=True, slots=True)
class _Versions:
    """Rival bid versions on candidate rows, with inclusive tick spans."""

    row: np.ndarray
    first: np.ndarray
    last: np.ndarray
    price: np.ndarray
    pl: np.ndarray
    bid_id: np.ndarray
    birth: np.ndarray
    cap_hint: np.ndarray


def _best_rivals(v: _Versions, n_ticks: int, n: int, state: EventStream, facts: EventStream,
                 clore: np.ndarray, allocation: str) -> EventStream:
    """The best rival per server and tick, in blocks of ticks, kept as its changes."""
    block = max(1, CHUNK_CELLS // max(n, 1))
    state_carry, facts_carry = dict(state.initial), dict(facts.initial)
    previous = _empty_rival_initial(n)
    ticks, rows, values = [], [], {c: [] for c in previous}
    for lo in range(0, n_ticks, block):
        hi = min(n_ticks, lo + block)
        s = state.dense(lo, hi, state_carry)
        f = facts.dense(lo, hi, facts_carry)
        state_carry, facts_carry = carry_after(s), carry_after(f)
        best = _best_in_block(v, lo, hi, n, s, f, clore[lo:hi], allocation)
        prev = {c: np.concatenate([previous[c][None, :], best[c][:-1]]) for c in best}
        same_price = (best["price"] == prev["price"]) | (np.isnan(best["price"])
                                                          & np.isnan(prev["price"]))
        changed = ~same_price | (best["bid_id"] != prev["bid_id"]) | \
            ~((best["pl"] == prev["pl"]) | (np.isnan(best["pl"]) & np.isnan(prev["pl"])))
        t, r = np.nonzero(changed)
        ticks.append(t + lo)
        rows.append(r)
        for c in values:
            values[c].append(best[c][t, r])
        previous = {c: best[c][-1] for c in best}
    return EventStream.build(n_ticks, np.concatenate(ticks) if ticks else np.empty(0, np.int64),
                             np.concatenate(rows) if rows else np.empty(0, np.int64),
                             {c: np.concatenate(x) if x else _empty_rival_initial(0)[c]
                              for c, x in values.items()}, _empty_rival_initial(n))


def _best_in_block(v: _Versions, lo: int, hi: int, n: int, state: dict[str, np.ndarray],
                   facts: dict[str, np.ndarray], clore: np.ndarray,
                   allocation: str) -> dict[str, np.ndarray]:
    """(hi - lo, n) arrays of the best rival's columns (price NaN where none)."""
    out = {c: np.repeat(x[None, :], hi - lo, axis=0) for c, x in _empty_rival_initial(n).items()}
    inside = np.flatnonzero((v.first < hi) & (v.last >= lo))
    version, tick = expand(np.maximum(v.first[inside], lo), np.minimum(v.last[inside], hi - 1))
    version = inside[version]
    cell = (tick - lo) * n + v.row[version]
    price = v.price[version]
    ok = price >= np.nan_to_num(state[f"{FLOOR}{CLORE}"].ravel()[cell], nan=np.inf)
    version, tick, cell, price = version[ok], tick[ok], cell[ok], price[ok]
    score = bid_scores(allocation, price, v.pl[version], facts["gpus"].ravel()[cell],
                       state["energy_price"].ravel()[cell], clore[tick - lo])  # type: ignore[arg-type]
    rank = np.where(np.isnan(score), price, score)
    top = _best_per_group(cell, rank, v.bid_id[version])
    top_cell, top_version = cell[top], version[top]
    for c, column in (("price", v.price), ("pl", v.pl), ("bid_id", v.bid_id),
                      ("birth", v.birth), ("cap_hint", v.cap_hint)):
        out[c].ravel()[top_cell] = column[top_version]
    return out


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
               MarketplaceListing.taken_at)
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
    fact_stream = EventStream.build(
        n_ticks, np.searchsorted(time, l_time[keep], side="left"), l_row[keep],
        {"gpus": l_gpus[keep], "gpu_model": l_model[keep], "country": l_cc[keep],
         "reliability": l_rel[keep], "rented": l_rented[keep]},
        {"gpus": np.zeros(n, np.int32), "gpu_model": np.full(n, "", dtype=object),
         "country": np.full(n, "", dtype=object), "reliability": np.full(n, np.nan),
         "rented": np.zeros(n, bool)})

    p_row = _row_of(ids, polls.server_id)
    keep = np.flatnonzero(p_row >= 0)
    currencies = sorted({t.currency for t in targets})
    k = len(keep)
    poll_tick = np.searchsorted(time, polls.time[keep], side="left")
    expiry_tick = np.searchsorted(time, _stale_after(polls.server_id[keep], polls.time[keep]),
                                  side="right")
    fresh = {"online": polls.online[keep], "rentable": polls.open[keep],
             "working_properly": np.ones(k, bool), "observed_at": polls.time[keep]}
    fresh.update({f"{FLOOR}{c}": np.array([float(polls.floors[i].get(c, np.nan)) for i in keep])
                  for c in currencies})
    stale = {**_offline_values(k, currencies), "observed_at": np.full(k, np.nan)}
    state_stream = EventStream.build(
        n_ticks, np.concatenate([expiry_tick, poll_tick]), np.concatenate([p_row[keep]] * 2),
        {c: np.concatenate([stale[c], fresh[c]]) for c in fresh},
        {**_offline_values(n, currencies), "observed_at": np.full(n, np.nan)})
    rivals, wins = _spot_rivals(session, polls, keep, p_row, poll_tick, expiry_tick, n_ticks, n,
                                fact_stream)
    return MarketHistory("spot", ids, fact_stream, state_stream, rivals, wins)


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
                 facts: EventStream) -> tuple[EventStream, WinVersions]:
    """The highest rival offer of each poll (ties to the lower offer id), as rival events."""
    position = np.full(int(polls.id.max(initial=0)) + 1, -1, dtype=np.int64)
    position[polls.id[keep]] = np.arange(len(keep))
    o = SpotOffer
    lo = float(polls.time.min(initial=0.0))
    offers = fetch_rows(session.connection(),
                        select(o.poll_id, o.offer_id, o.bid, o.active)
                        .join(SpotPoll, SpotPoll.id == o.poll_id)
                        .where(SpotPoll.polled_at >= lo, o.my.is_(False)))
    o_poll, o_id, o_bid, o_active = to_columns(offers, (np.int64, np.int64, np.float64, bool))
    ok = o_poll < len(position)
    o_poll, o_id, o_bid, o_active = o_poll[ok], o_id[ok], o_bid[ok], o_active[ok]
    o_pos = position[o_poll]
    ok = o_pos >= 0
    o_pos, o_id, o_bid, o_active = o_pos[ok], o_id[ok], o_bid[ok], o_active[ok]
    o_tick = poll_tick[o_pos]
    birth = _per_key(o_id, o_tick, np.minimum)
    cap_hint = _per_key(o_id, o_bid, np.maximum)
    top = _best_per_group(o_pos, o_bid, o_id)
    k = len(keep)
    best = _empty_rival_initial(k)
    best["price"][o_pos[top]] = o_bid[top]
    best["bid_id"][o_pos[top]] = o_id[top]
    best["birth"][o_pos[top]] = birth[top]
    best["cap_hint"][o_pos[top]] = cap_hint[top]
    none = _empty_rival_initial(k)
    rows = p_row[keep]
    stream = EventStream.build(n_ticks, np.concatenate([expiry_tick, poll_tick]),
                               np.concatenate([rows, rows]),
                               {c: np.concatenate([none[c], best[c]]) for c in best},
                               _empty_rival_initial(n))
    gpus = np.maximum(_final(facts)["gpus"], 1)
    won = np.flatnonzero(o_active)
    win_rows = rows[o_pos[won]]
    win_tick = o_tick[won]
    return stream, WinVersions(win_rows, win_tick, win_tick, o_bid[won] / gpus[win_rows])


def count_recorded(session: Session) -> tuple[int, int]:
    """(GigaSPOT snapshots, spot polls) in the database."""
    return (session.scalar(select(func.count()).select_from(GigaspotSnapshot)) or 0,
            session.scalar(select(func.count()).select_from(SpotPoll)) or 0)

"""Which spot servers a poll round asks ``spot_marketplace`` about.

The spot market can only be watched one server per request, within a budget of one request per
second shared with everything else the bot does, so a round polls a few servers: our own orders'
servers first (every round), then the spot targets' candidates in turn, so that every candidate is
polled again after ``len(candidates) / slots`` rounds.

Candidates come from the newest recorded ``marketplace`` listing, matched with the same rules as
the bot's view (``bidder.view.static_match``: GPU model, GPUs per server, countries, exclusions),
plus what the listing can tell about the rest: reliability, the order currency being accepted, the
server not being rented on demand, and its floor not above the target's cap.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bidder.config import PollerConfig, TargetConfig
from bidder.view import cap_per_gpu_day, static_match
from storage.frames import MarketFrame
from storage.models import CurrencyRates, MarketplaceListing, MarketplaceServer

ALL_SERVERS = "*"
"""The candidate group of a watch list that watches every listed server."""


def listing_frame(session: Session) -> MarketFrame | None:
    """The newest recorded ``marketplace`` listing as a spot ``MarketFrame`` without offers
    (``None`` before the first listing). Rates are the newest recorded ``currency_rates_in_usd``."""
    newest = session.execute(select(MarketplaceListing.id, MarketplaceListing.taken_at)
                             .order_by(MarketplaceListing.id.desc()).limit(1)).first()
    if newest is None:
        return None
    m = MarketplaceServer
    rows = session.execute(
        select(m.server_id, m.gpu_count, m.gpu_model, m.country, m.reliability, m.rented,
               m.spot_floors)
        .where(m.end_listing.is_(None)).order_by(m.server_id)).all()
    rates = session.scalar(select(CurrencyRates.rates).order_by(CurrencyRates.id.desc()).limit(1))
    n = len(rows)
    currencies = sorted({c for r in rows for c in r.spot_floors})
    nan = np.full(n, np.nan)
    return MarketFrame(
        market="spot",
        time=float(newest.taken_at),
        clore_usd=math.nan,
        rates_usd={str(k): float(v) for k, v in (rates or {}).items()},
        server_id=np.array([r.server_id for r in rows], dtype=np.int64),
        gpus=np.array([r.gpu_count or 0 for r in rows], dtype=np.int32),
        gpu_model=np.array([r.gpu_model for r in rows], dtype=object),
        country=np.array([r.country or "" for r in rows], dtype=object),
        reliability=np.array([np.nan if r.reliability is None else r.reliability for r in rows],
                             dtype=np.float64),
        online=np.ones(n, dtype=bool),
        rentable=np.array([r.rented is not True for r in rows], dtype=bool),
        working_properly=np.ones(n, dtype=bool),
        energy_price=nan,
        pl_min=nan,
        pl_max=nan,
        observed_at=np.full(n, float(newest.taken_at)),
        floors={c: np.array([r.spot_floors.get(c, np.nan) for r in rows], dtype=np.float64)
                for c in currencies},
        bid_start=np.zeros(n + 1, dtype=np.int64),
        bid_id=np.empty(0, dtype=np.int64),
        bid_owner=np.empty(0, dtype=np.int64),
        bid_price=np.empty(0, dtype=np.float64),
        bid_pl=np.empty(0, dtype=np.float64),
        bid_active=np.empty(0, dtype=bool),
        bid_mine=np.empty(0, dtype=bool),
    )


def target_candidates(frame: MarketFrame, target: TargetConfig) -> list[int]:
    """The listed servers worth watching for a spot ``target``, by id.

    A floor is compared with the cap only when the cap converts to the order currency (a USD cap
    before any rates are recorded does not exclude anything).
    """
    floor = frame.floor(target.currency)
    ok = static_match(frame, target) & frame.rentable & np.isfinite(floor)
    if target.min_reliability > 0:
        ok &= frame.reliability >= target.min_reliability  # unknown (NaN) fails, as in the view
    cap = cap_per_gpu_day(frame, target)
    if math.isfinite(cap):
        ok &= floor <= cap * frame.gpus
    return frame.server_id[ok].tolist()


def watch_round_complete(candidates: Sequence[int] | np.ndarray, polled_id: np.ndarray,
                         polled_at: np.ndarray, *, since: float, now: float,
                         poller: PollerConfig) -> bool | None:
    """Whether a spot target has seen one full watch-list round since ``since`` (the run's
    start): every one of its ``candidates`` (``target_candidates`` of the newest listing) has a
    poll at or after ``since`` (``polled_id``/``polled_at``: the market's servers and when each
    was last polled, NaN when not), or two rounds' time has passed, in case one cannot be polled.
    None when there are no candidates (no listing yet, or none matches): nothing to wait for now,
    but no round either, so the callers ask again at their next decision rather than take the
    round as done (a replay's first decisions may come before the listing a live cycle read).

    Until then the target creates nothing (``TargetView.watching``): it would buy the first
    servers polled and move as soon as cheaper ones showed up, each move a creation fee and a new
    cooldown. The live engine and the backtest both ask this, with the same inputs.
    """
    wanted = np.asarray(candidates, dtype=np.int64)
    if not len(wanted):
        return None
    with np.errstate(invalid="ignore"):
        polled = np.asarray(polled_id, dtype=np.int64)[np.asarray(polled_at) >= since]
    if bool(np.isin(wanted, polled).all()):
        return True
    rounds = math.ceil(len(wanted) / poller.spot_polls_per_round) + 1
    return now - since >= 2 * rounds * poller.spot_interval


class RoundRobin:
    """Takes servers from several groups in turn; each group goes on after the server it gave last.

    Remembering the last server *id* (not a position) keeps the rotation fair when a new listing
    adds or removes servers: a group picks up at the next id after the last one it gave.
    """

    def __init__(self) -> None:
        self._after: dict[str, int] = {}
        self._turn = 0

    def take(self, groups: Mapping[str, Sequence[int]], slots: int,
             skip: Collection[int] = ()) -> list[int]:
        """Up to ``slots`` distinct servers, one group after the other; servers in ``skip`` (already
        polled this round) count as given. The group that starts changes every call."""
        names = [name for name, ids in groups.items() if ids]
        if names:
            start = self._turn % len(names)
            names = names[start:] + names[:start]
        self._turn += 1
        queues = {name: self._cycle(name, groups[name]) for name in names}
        taken = set(skip)
        chosen: list[int] = []
        while queues and len(chosen) < slots:
            for name in list(queues):
                server = self._next(name, queues, taken)
                if server is None:
                    continue
                chosen.append(server)
                taken.add(server)
                if len(chosen) == slots:
                    break
        return chosen

    def _cycle(self, name: str, ids: Sequence[int]) -> list[int]:
        """``ids`` (sorted) starting after the last one this group gave, wrapping around, reversed
        so that ``pop()`` gives the next."""
        ordered = sorted(set(ids))
        last = self._after.get(name)
        start = 0 if last is None else bisect_right(ordered, last)
        return (ordered[start:] + ordered[:start])[::-1]

    def _next(self, name: str, queues: dict[str, list[int]], taken: set[int]) -> int | None:
        queue = queues[name]
        server = None
        while queue and server is None:
            candidate = queue.pop()
            self._after[name] = candidate
            server = None if candidate in taken else candidate
        if not queue:
            del queues[name]
        return server


@dataclass(frozen=True, slots=True)
class _Groups:
    key: tuple[int | None, int | None]
    """(newest listing id, newest rates id) they were computed from."""
    groups: dict[str, list[int]]


class SpotWatchList:
    """Plans the servers of each spot round: ``own`` first, then candidates round robin.

    ``targets`` are the spot targets (others are ignored); with ``watch_all`` every listed server is
    a candidate instead (the recorder without targets watches the whole market). Candidates are
    recomputed only when a new listing or new rates were recorded. Not thread-safe: one round at a
    time.
    """

    def __init__(self, targets: Sequence[TargetConfig], *, watch_all: bool = False) -> None:
        self._targets = [t for t in targets if t.market == "spot"]
        self._watch_all = watch_all
        self._own = RoundRobin()
        self._candidates = RoundRobin()
        self._cached: _Groups | None = None

    def candidates(self, session: Session) -> dict[str, list[int]]:
        """Candidate server ids per target name (or ``ALL_SERVERS``), from the newest listing."""
        key = (session.scalar(select(func.max(MarketplaceListing.id))),
               session.scalar(select(func.max(CurrencyRates.id))))
        if self._cached is None or self._cached.key != key:
            frame = listing_frame(session)
            if frame is None:
                groups: dict[str, list[int]] = {}
            elif self._watch_all:
                groups = {ALL_SERVERS: frame.server_id.tolist()}
            else:
                groups = {t.name: target_candidates(frame, t) for t in self._targets}
            self._cached = _Groups(key, groups)
        return self._cached.groups

    def plan(self, session: Session, own: Sequence[int], slots: int) -> list[int]:
        """The servers to poll this round, in order: at most ``slots``, ``own`` first (in the
        given order; in turn should they be more than ``slots``), then candidates."""
        first = list(own) if len(own) <= slots else self._own.take({"own": own}, slots)
        return first + self._candidates.take(self.candidates(session), slots - len(first),
                                             skip=first)

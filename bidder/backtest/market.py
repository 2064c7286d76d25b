"""One recorded market as a run walks its ticks: current columns, per-tick frames, order books.

``ReplayMarket`` applies each tick's recorded changes to its current columns in place and builds
the ``MarketFrame`` the view builder reads: the candidate servers, each with its best rival as its
only bid (the only one that matters for the threshold and the winner). The frame's arrays are the
current columns themselves, so a frame is valid until the next ``advance``; the server columns the
static match depends on are replaced (not changed in place) when a server's facts change, so a
``StaticMatchCache`` keeps its masks exactly as long as they hold.

What does not depend on our orders can be worked out for many ticks at once from the recorded
changes: ``thresholds`` gives the views every server's rival threshold that way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bidder.allocation import one_bid_threshold
from bidder.backtest.data import FLOOR, IDLE, LISTED_FLOOR, OURS, History, MarketHistory
from bidder.backtest.events import EventStream
from bidder.backtest.fills import Book
from storage.frames import MarketFrame

THRESHOLD_BLOCK = 256
"""Ticks whose rival thresholds ``ReplayMarket.thresholds`` works out at once."""


@dataclass(frozen=True, slots=True, eq=False)
class _ReplayFrame(MarketFrame):
    """A frame whose server index is given (built once per run) rather than rebuilt per tick."""

    def __post_init__(self) -> None:
        pass


class ReplayMarket:
    def __init__(self, history: History, market: MarketHistory) -> None:
        self.history = history
        self.data = market
        self.market = market.market
        self.facts = market.facts.current()
        self.state = market.state.current()
        self.rivals = market.rivals.current()
        self.tick = -1
        n = market.n_servers
        self.changed_at = np.full(n, -1, dtype=np.int64)
        """Per server: the last tick its recorded data changed."""
        self._one_each = np.arange(n + 1, dtype=np.int64)
        self._no_owner = np.full(n, -1, dtype=np.int64)
        self._false = np.zeros(n, dtype=bool)
        self._index = {int(s): i for i, s in enumerate(market.server_id.tolist())}
        self._clore_usd: list[float] = history.clore_usd.tolist()
        self._nan = np.full(n, np.nan)
        self._floors = {c[len(FLOOR):]: v for c, v in self.state.items() if c.startswith(FLOOR)}
        """The state's floor columns by currency: changed in place, never replaced."""
        self._observed_at = np.empty(n)
        """Refilled with each frame's time when the market records no observation times"""
        self._thresholds: dict[tuple[str, float | None, str], _Thresholds] = {}

    def advance(self, tick: int) -> None:
        """Apply the recorded changes of every tick up to ``tick`` (never backwards)."""
        facts, state, rivals = self.data.facts, self.data.state, self.data.rivals
        for t in range(self.tick + 1, tick + 1):
            if facts.start[t] != facts.start[t + 1]:  # new arrays: see the module docstring
                self.facts = {c: v.copy() for c, v in self.facts.items()}
                self.changed_at[facts.apply(t, self.facts)] = t
            for stream, columns in ((state, self.state), (rivals, self.rivals)):
                rows = stream.apply(t, columns)
                if len(rows):
                    self.changed_at[rows] = t
        self.tick = max(self.tick, tick)

    # --- columns ---------------------------------------------------------------------------------

    def row(self, server_id: int) -> int | None:
        """Row of a candidate server; None for any other."""
        return self._index.get(server_id)

    def floor(self, currency: str) -> np.ndarray:
        return self.state.get(f"{FLOOR}{currency}", self._nan)

    @property
    def reliability(self) -> np.ndarray:
        return self.state["reliability"] if "reliability" in self.state else self.facts["reliability"]

    @property
    def rentable(self) -> np.ndarray:
        rented = self.facts.get("rented")
        if rented is None:
            return self.state["rentable"]
        ours = self.state.get(OURS)  # our own offer's server: not rented to someone else
        return self.state["rentable"] & ~(rented if ours is None else rented & ~ours)

    @property
    def idle(self) -> np.ndarray | None:
        """Spot: per server, whether its poll saw offers waiting and none running (None: the
        market records no such thing)."""
        return self.state.get(IDLE)

    @property
    def energy_price(self) -> np.ndarray:
        return self.state.get("energy_price", self._nan)

    def clore_usd(self) -> float:
        return self._clore_usd[self.tick]

    def rates(self) -> Mapping[str, float]:
        return self.history.rates_at(self.tick)

    def frame(self, now: float, rival_price: np.ndarray) -> MarketFrame:
        """The market at the current tick as the view builder reads it.

        Each server's only bid is its best rival (``rival_price``: as recorded, or as reactive
        rivals moved it), a NaN price where there is none: a bid under every floor, which never
        competes. One bid per server whatever happens keeps the bid block the current columns
        themselves, with nothing to rebuild per tick."""
        facts, state = self.facts, self.state
        observed = state.get("observed_at")
        if observed is None:
            observed = self._observed_at
            observed.fill(now)
        return _ReplayFrame(
            market=self.market, time=now, clore_usd=self.clore_usd(), rates_usd=self.rates(),
            server_id=self.data.server_id, gpus=facts["gpus"], gpu_model=facts["gpu_model"],
            country=facts["country"], reliability=self.reliability, online=state["online"],
            rentable=self.rentable, working_properly=state["working_properly"],
            energy_price=self.energy_price, pl_min=facts.get("pl_min", self._nan),
            pl_max=facts.get("pl_max", self._nan),
            observed_at=observed, floors=self._floors, index=self._index,
            bid_start=self._one_each, bid_id=self.rivals["bid_id"], bid_owner=self._no_owner,
            bid_price=rival_price, bid_pl=self.rivals["pl"], bid_active=self._false,
            bid_mine=self._false)

    def listing(self, now: float) -> MarketFrame:
        """The spot servers as the ``marketplace`` listing states them now (its floors, its
        ``rented``), as ``bidder.watchlist.listing_frame`` gives them live: what the watch list
        picks its candidates from. Not polled: no offers, ``observed_at`` now."""
        facts = self.facts
        n = self.data.n_servers
        floors = {c[len(LISTED_FLOOR):]: v for c, v in facts.items() if c.startswith(LISTED_FLOOR)}
        rented = facts.get("rented", self._false)
        return MarketFrame(
            market=self.market, time=now, clore_usd=self.clore_usd(), rates_usd=self.rates(),
            server_id=self.data.server_id, gpus=facts["gpus"], gpu_model=facts["gpu_model"],
            country=facts["country"], reliability=facts.get("reliability", self._nan),
            online=np.ones(n, dtype=bool), rentable=~rented, working_properly=np.ones(n, bool),
            energy_price=self._nan, pl_min=self._nan, pl_max=self._nan,
            observed_at=np.full(n, now), floors=floors,
            bid_start=np.zeros(n + 1, dtype=np.int64), bid_id=np.empty(0, np.int64),
            bid_owner=np.empty(0, np.int64), bid_price=np.empty(0), bid_pl=np.empty(0),
            bid_active=np.empty(0, bool), bid_mine=np.empty(0, bool))

    def thresholds(self, rule: str, our_pl: float | None,
                   currency: str) -> tuple[np.ndarray, np.ndarray]:
        """``bidder.allocation.rival_threshold`` of every server at the current tick against the
        recorded best rivals: what a view of the current frame works out, for a bid with power
        limit ``our_pl`` and floors in ``currency``.

        Worked out for ``THRESHOLD_BLOCK`` ticks at once from the recorded changes: the same
        element-wise arithmetic on every (tick, server), so the same numbers, at a fraction of the
        cost of one tick at a time. Only for the recorded rivals: reactive ones move with our
        orders, and a view of their frame works its thresholds out itself."""
        key = (rule, our_pl, currency)
        block = self._thresholds.get(key)
        if block is None or not block.first <= self.tick < block.first + len(block.threshold):
            block = self._thresholds[key] = self._threshold_block(rule, our_pl, currency)
        k = self.tick - block.first
        return block.threshold[k], block.rival_price[k]

    def _threshold_block(self, rule: str, our_pl: float | None, currency: str) -> _Thresholds:
        """The thresholds of the ticks from the current one on (see ``thresholds``)."""
        lo = self.tick
        hi = min(lo + THRESHOLD_BLOCK, self.history.n_ticks)
        floor = f"{FLOOR}{currency}"

        def block(stream: EventStream, current: Mapping[str, np.ndarray],
                  columns: tuple[str, ...]) -> dict[str, np.ndarray]:
            # the current columns carry the current tick's changes, which apply again as they are
            known = tuple(c for c in columns if c in current)
            out = stream.dense(lo, hi, current, known)
            return {c: out.get(c, np.broadcast_to(self._nan, (hi - lo, len(self._nan))))
                    for c in columns}

        rivals = block(self.data.rivals, self.rivals, ("price", "pl"))
        state = block(self.data.state, self.state, ("energy_price", floor))
        gpus = block(self.data.facts, self.facts, ("gpus",))["gpus"]
        threshold, rival_price = one_bid_threshold(
            rule, bid_price=rivals["price"], bid_pl=rivals["pl"],
            bid_mine=np.zeros(rivals["price"].shape, dtype=bool), gpus=gpus,
            energy_price=state["energy_price"],
            clore_usd=self.history.clore_usd[lo:hi, np.newaxis], our_pl=our_pl,
            floor=state[floor])
        return _Thresholds(lo, threshold, rival_price)

    def book(self, rows: np.ndarray, currency: str | np.ndarray,
             rival_price: np.ndarray) -> Book:
        """The market around servers ``rows`` (one per order), floors in each order's currency."""
        if isinstance(currency, str):
            floor = self.floor(currency)[rows]
        else:
            floor = np.array([self.floor(c)[r] for c, r in zip(currency, rows)], dtype=np.float64)
        return Book(floor=floor, can_win=(self.state["online"] & self.rentable)[rows],
                    gpus=self.facts["gpus"][rows], energy_price=self.energy_price[rows],
                    rival_price=rival_price[rows], rival_pl=self.rivals["pl"][rows],
                    rival_birth=self.rivals["birth"][rows])


@dataclass(frozen=True, slots=True)
class _Thresholds:
    """Rival thresholds and prices (tick x server) of the ticks from ``first`` on."""

    first: int
    threshold: np.ndarray
    rival_price: np.ndarray

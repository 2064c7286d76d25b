"""One recorded market as a run walks its ticks: current columns, per-tick frames, order books.

``ReplayMarket`` applies each tick's recorded changes to its current columns in place and builds
the ``MarketFrame`` the view builder reads: the candidate servers, each with its best rival as its
only bid (the only one that matters for the threshold and the winner). The frame's arrays are the
current columns themselves, so a frame is valid until the next ``advance``; the server columns the
static match depends on are replaced (not changed in place) when a server's facts change, so a
``StaticMatchCache`` keeps its masks exactly as long as they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bidder.backtest.data import FLOOR, History, MarketHistory
from bidder.backtest.fills import Book
from storage.frames import MarketFrame


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
        self._currencies = [c[len(FLOOR):] for c in self.state if c.startswith(FLOOR)]

    def advance(self, tick: int) -> None:
        """Apply the recorded changes of every tick up to ``tick`` (never backwards)."""
        for t in range(self.tick + 1, tick + 1):
            if self.data.facts.start[t] != self.data.facts.start[t + 1]:
                self.facts = {c: v.copy() for c, v in self.facts.items()}
            for stream, columns in ((self.data.facts, self.facts), (self.data.state, self.state),
                                    (self.data.rivals, self.rivals)):
                if stream.apply(t, columns):
                    self.changed_at[stream.rows_at(t)] = t
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
        return self.state["rentable"] if rented is None else self.state["rentable"] & ~rented

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
        return _ReplayFrame(
            market=self.market, time=now, clore_usd=self.clore_usd(), rates_usd=self.rates(),
            server_id=self.data.server_id, gpus=facts["gpus"], gpu_model=facts["gpu_model"],
            country=facts["country"], reliability=self.reliability, online=state["online"],
            rentable=self.rentable, working_properly=state["working_properly"],
            energy_price=self.energy_price, pl_min=facts.get("pl_min", self._nan),
            pl_max=facts.get("pl_max", self._nan),
            observed_at=observed if observed is not None else np.full(len(self._nan), now),
            floors={c: state[f"{FLOOR}{c}"] for c in self._currencies}, index=self._index,
            bid_start=self._one_each, bid_id=self.rivals["bid_id"], bid_owner=self._no_owner,
            bid_price=rival_price, bid_pl=self.rivals["pl"], bid_active=self._false,
            bid_mine=self._false)

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


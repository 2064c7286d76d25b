"""Reactive mode: the best rival on a server answers our bids, like the simulated market's outbidders.

Replay mode assumes our bids never move anyone. Here, when one of our orders takes a server, its
best recorded rival becomes an outbidder (``bidder.sim.agents.outbid_price``): after a reaction
delay it raises to just above us, up to a private cap, and we may answer in turn. It never goes
below its recorded price, and stops answering at its cap (it stays where it is, as the sim's
outbidders do). An agent is bound to one recorded bid: when the recording shows another best rival
on that server, the recording takes over again.

An agent's delay and cap come from a generator seeded by (seed, server, bid), so a run is
deterministic for a seed. Its cap is its highest recorded price times a markup, since a bidder
that once paid that much could pay it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bidder.allocation import bid_scores, price_for_score
from bidder.sim.agents import outbid_price


@dataclass(frozen=True, slots=True)
class ReactiveSettings:
    seed: int = 1
    reaction: tuple[float, float] = (20.0, 300.0)
    """Seconds from losing the server to answering, drawn uniformly (the sim's spot agents)."""
    cap_markup: tuple[float, float] = (1.0, 1.5)
    """The private cap: the bid's highest recorded price times a markup drawn uniformly."""


class ReactiveRivals:
    """The rival agents of one market (arrays over its candidate servers)."""

    def __init__(self, settings: ReactiveSettings, server_id: np.ndarray, *,
                 in_clore: bool = True) -> None:
        n = len(server_id)
        self.settings = settings
        self.in_clore = in_clore
        """Prices in CLORE (rounded as the agents bid); else in another currency (not rounded)."""
        self._server_id = server_id
        self.bound = np.full(n, -1, dtype=np.int64)
        """The recorded bid each agent stands for; -1: no agent."""
        self.price = np.full(n, np.nan)
        self.cap = np.full(n, np.nan)
        self.delay = np.zeros(n)
        self.wake_at = np.full(n, np.inf)
        self.raises = 0
        self.version = 0
        """Changes whenever an agent's price or binding changes."""

    def effective(self, recorded_price: np.ndarray, recorded_id: np.ndarray) -> np.ndarray:
        """The best rival's price per server: the agent's where it still stands for the recorded
        best rival (never below the recording), else the recording."""
        stale = (self.bound >= 0) & (self.bound != recorded_id)
        if stale.any():
            self.version += 1
            self.bound[stale] = -1
            self.price[stale] = np.nan
            self.wake_at[stale] = np.inf
        live = self.bound >= 0
        return np.where(live, np.fmax(recorded_price, self.price), recorded_price)

    def taken(self, rows: np.ndarray, now: float, rival_id: np.ndarray,
              rival_price: np.ndarray, cap_hint: np.ndarray) -> None:
        """Our orders just took servers ``rows`` from their best rivals (``rival_*`` per row):
        those rivals (agents from now on) answer after their delay."""
        for k, row in enumerate(rows.tolist()):
            if rival_id[k] < 0:
                continue
            if self.bound[row] != rival_id[k]:
                self.version += 1
                rng = np.random.default_rng([self.settings.seed, int(self._server_id[row]),
                                             int(rival_id[k]) & 0x7FFF_FFFF])
                self.bound[row] = rival_id[k]
                self.price[row] = rival_price[k]
                self.delay[row] = rng.uniform(*self.settings.reaction)
                self.cap[row] = cap_hint[k] * rng.uniform(*self.settings.cap_markup)
            self.wake_at[row] = now + self.delay[row]

    def due(self, now: float) -> np.ndarray:
        """Rows whose agent acts now."""
        return np.flatnonzero(self.wake_at <= now)

    def rest(self, rows: np.ndarray) -> None:
        """The agents on ``rows`` have woken: none wakes again until it loses its server again."""
        self.wake_at[rows] = np.inf

    def answer(self, rows: np.ndarray, rule: str, *, our_price: np.ndarray, our_pl: np.ndarray,
               holding: np.ndarray, rival_pl: np.ndarray, gpus: np.ndarray,
               energy_price: np.ndarray, clore_usd: float) -> np.ndarray:
        """The agents on ``rows`` (servers where we have an order: ``our_*`` per row) answer:
        where we hold (``holding``), each raises to just above us if its cap allows. Returns the
        positions (into ``rows``) of the agents that raised: they hold their servers now."""
        ours = bid_scores(rule, our_price, our_pl, gpus, energy_price, clore_usd)
        to_win = price_for_score(rule, ours, rival_pl, gpus, energy_price, clore_usd)
        raised = []
        for k, row in enumerate(rows.tolist()):
            if not holding[k] or not np.isfinite(to_win[k]):
                continue
            new = outbid_price(float(self.price[row]), float(to_win[k]), float(self.cap[row]),
                               in_clore=self.in_clore)
            if new is not None:
                self.price[row] = new
                self.raises += 1
                self.version += 1
                raised.append(k)
        return np.array(raised, dtype=np.int64)

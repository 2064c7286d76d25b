"""Market memory: how contested each server has been, so a strategy can prefer quiet ones.

A server where a rival answers every raise (a NiceHashBot-style ratchet) costs more than its price
today says: each answer means another raise, another preemption, another order's cooldown. One
``MarketMemory`` per target watches the best rival's price on the target's candidates at every
decision, live and in backtests alike (``bidder.view.build_target_view`` feeds it), and keeps two
exponentially decayed rates per server:

- ``raises_per_hour``: the best rival's price went up (a rival raised, or a dearer bid took over);
- ``hands_per_hour``: the best bid changed hands otherwise (a rival arrived, left, or a cheaper bid
  became the best one because the best left).

Observations are per decision, so events between two decisions count once. Pure numpy; no I/O.
"""

from __future__ import annotations

import math

import numpy as np

HALF_LIFE = 6 * 3600.0
"""Seconds after which an event counts half."""
TOLERANCE = 1e-9


class MarketMemory:
    def __init__(self, half_life: float = HALF_LIFE) -> None:
        self.tau = half_life / math.log(2.0)
        self._ids = np.empty(0, dtype=np.int64)
        self._price = np.empty(0)
        self._raises = np.empty(0)
        self._hands = np.empty(0)
        self._first = np.empty(0)
        self._at: float | None = None

    def observe(self, now: float, server_id: np.ndarray,
                rival_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take in the best rival's price (NaN: none) on ``server_id`` now; return their
        (raises per hour, hands per hour) as of now."""
        ids = np.asarray(server_id, dtype=np.int64)
        self._add(ids, now)
        if self._at is not None and now > self._at:
            w = math.exp(-(now - self._at) / self.tau)
            self._raises *= w
            self._hands *= w
        self._at = now if self._at is None else max(self._at, now)
        pos = self._ids.searchsorted(ids)
        before, price = self._price[pos], np.asarray(rival_price, dtype=np.float64)
        had, has = np.isfinite(before), np.isfinite(price)
        both = had & has
        with np.errstate(invalid="ignore"):
            raised = both & (price > before * (1 + TOLERANCE) + TOLERANCE)
            fell = both & (price < before * (1 - TOLERANCE) - TOLERANCE)
        seen = self._first[pos] < now  # not new this time: a first look is no event
        np.add.at(self._raises, pos, (raised & seen).astype(np.float64))
        np.add.at(self._hands, pos, (((had != has) | fell) & seen).astype(np.float64))
        self._price[pos] = price
        return self.rates(pos, now)

    def rates(self, pos: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        age = np.maximum(now - self._first[pos], 0.0)
        window = self.tau * -np.expm1(-age / self.tau)  # the decayed time observed
        hours = np.maximum(window, 60.0) / 3600.0
        return self._raises[pos] / hours, self._hands[pos] / hours

    def _add(self, ids: np.ndarray, now: float) -> None:
        """Make room for servers not seen before (rare after the first decisions)."""
        pos = np.minimum(self._ids.searchsorted(ids), max(len(self._ids) - 1, 0))
        new = ids if not len(self._ids) else ids[self._ids[pos] != ids]
        if not len(new):
            return
        new = np.unique(new)
        ids_all = np.concatenate([self._ids, new])
        order = ids_all.argsort(kind="stable")
        k = len(new)
        self._ids = ids_all[order]
        self._price = np.concatenate([self._price, np.full(k, np.nan)])[order]
        self._raises = np.concatenate([self._raises, np.zeros(k)])[order]
        self._hands = np.concatenate([self._hands, np.zeros(k)])[order]
        self._first = np.concatenate([self._first, np.full(k, now)])[order]

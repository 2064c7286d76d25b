"""Market memory: how contested each server has been, so a strategy can prefer quiet ones.

A server where a rival answers every raise (a NiceHashBot-style ratchet) costs more than its price
today says: each answer means another raise, another preemption, another order's cooldown. One
``MarketMemory`` per target watches the best rival's price on the target's candidates at every
decision, live and in backtests alike (``bidder.view.build_target_view`` feeds it), and keeps
three exponentially decayed rates per server and a recent high:

- ``raises_per_hour``: the best rival's price went up (a rival raised, or a dearer bid took over);
- ``hands_per_hour``: the best bid changed hands otherwise (a rival arrived, left, or a cheaper bid
  became the best one because the best left);
- ``falls_per_hour``: of those, the best rival's price went down (a rival lowered, or a cheaper bid
  took over): a ratchet's steps down. A rival that only comes and goes (a flickering listing) has
  hands but no falls, so it does not look like a saw;
- ``rival_high``: the best rival's highest price over the last ``HIGH_WINDOW`` (six hours; NaN: no
  rival seen in it). A ratchet's price is a saw: its low points are cheap to beat, but holding the
  server means staying above its jumps, so what a server costs to hold is its recent high.

Observations are per decision, so events between two decisions count once. Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

HALF_LIFE = 6 * 3600.0
"""Seconds after which an event counts half."""
TOLERANCE = 1e-9
HIGH_WINDOW = HALF_LIFE
"""Seconds over which ``rival_high`` is the maximum (to within one of ``HIGH_BUCKETS``): as long
as a raise is remembered, so is the price it went to. A ratchet jumps back up about once an hour
at random; an hour's window often sees only its fall and undervalues it."""
HIGH_BUCKETS = 6


class Contest(NamedTuple):
    """How contested each server has been, aligned with the ids observed."""

    raises_per_hour: np.ndarray
    hands_per_hour: np.ndarray
    rival_high: np.ndarray
    falls_per_hour: np.ndarray


class MarketMemory:
    def __init__(self, half_life: float = HALF_LIFE, high_window: float = HIGH_WINDOW) -> None:
        self.tau = half_life / math.log(2.0)
        self.bucket = high_window / HIGH_BUCKETS
        self._highs = np.empty((0, HIGH_BUCKETS + 1))
        """Per server, the best rival's maximum in each of the last buckets (a ring; NaN: none)."""
        self._older = np.empty(0)
        """Per server, the maximum of ``_highs`` but the newest bucket's (NaN: none)."""
        self._bucket_at: int | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._price = np.empty(0)
        self._raises = np.empty(0)
        self._hands = np.empty(0)
        self._falls = np.empty(0)
        self._first = np.empty(0)
        self._at: float | None = None

    def observe(self, now: float, server_id: np.ndarray, rival_price: np.ndarray) -> Contest:
        """Take in the best rival's price (NaN: none) on ``server_id`` now (distinct ids, as a
        view's servers are); return their raises, hands and falls per hour and the rival's recent
        high, as of now."""
        ids = np.asarray(server_id, dtype=np.int64)
        self._add(ids, now)
        if self._at is not None and now > self._at:
            w = math.exp(-(now - self._at) / self.tau)
            self._raises *= w
            self._hands *= w
            self._falls *= w
        self._at = now if self._at is None else max(self._at, now)
        pos = self._ids.searchsorted(ids)
        before, price = self._price[pos], np.asarray(rival_price, dtype=np.float64)
        had, has = np.isfinite(before), np.isfinite(price)
        both = had & has
        with np.errstate(invalid="ignore"):
            raised = both & (price > before * (1 + TOLERANCE) + TOLERANCE)
            fell = both & (price < before * (1 - TOLERANCE) - TOLERANCE)
        seen = self._first[pos] < now  # not new this time: a first look is no event
        # a view's servers are distinct, so ``pos`` holds no position twice: a plain indexed add
        self._raises[pos] += raised & seen
        self._hands[pos] += ((had != has) | fell) & seen
        self._falls[pos] += fell & seen
        self._price[pos] = price
        slot = self._roll(now)
        newest = np.fmax(self._highs[pos, slot], price)
        self._highs[pos, slot] = newest
        high = np.fmax(self._older[pos], newest)  # NaN only where no rival was seen
        age = np.maximum(now - self._first[pos], 0.0)
        window = self.tau * -np.expm1(-age / self.tau)  # the decayed time observed
        hours = np.maximum(window, 60.0) / 3600.0
        return Contest(self._raises[pos] / hours, self._hands[pos] / hours, high,
                       self._falls[pos] / hours)

    def _roll(self, now: float) -> int:
        """The ring slot of ``now``'s bucket, clearing buckets older than the window."""
        at = int(now // self.bucket)
        size = HIGH_BUCKETS + 1
        if self._bucket_at is not None and at > self._bucket_at:
            for b in range(max(self._bucket_at + 1, at - size + 1), at + 1):
                self._highs[:, b % size] = np.nan
        if self._bucket_at is None or at > self._bucket_at:
            self._bucket_at = at
            self._older_of(at % size)
        return self._bucket_at % size  # a late observation counts in the newest bucket

    def _older_of(self, newest: int) -> None:
        """Each server's high over the buckets but the ``newest`` slot, worked out once a bucket
        (they do not change until the next) rather than at every observation."""
        self._older = np.fmax.reduce(np.delete(self._highs, newest, axis=1), axis=1)

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
        self._falls = np.concatenate([self._falls, np.zeros(k)])[order]
        self._first = np.concatenate([self._first, np.full(k, now)])[order]
        self._highs = np.concatenate([self._highs, np.full((k, HIGH_BUCKETS + 1), np.nan)])[order]
        self._older = np.concatenate([self._older, np.full(k, np.nan)])[order]

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
  hands but no falls, so it does not look like a saw; ``falls_seen`` is the decayed count itself
  (a rate from one fall seen on a server watched for a minute is no evidence);
- ``rival_high``: the best rival's highest price over the last ``HIGH_WINDOW`` (six hours; NaN: no
  rival seen in it). A ratchet's price is a saw: its low points are cheap to beat, but holding the
  server means staying above its jumps, so what a server costs to hold is its recent high.

Observations are per decision, so events between two decisions count once. A run's memories
start with the market recorded before it (``bidder.warmup``), live and in backtests alike. Pure
numpy; no I/O.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

HALF_LIFE = 6 * 3600.0
"""Seconds after which an event counts half."""
TOLERANCE = 1e-9
NONE = -1.0
"""The price kept for "no rival" (prices are finite and not negative: the view makes a price it
cannot know NaN)."""
HIGH_WINDOW = HALF_LIFE
"""Seconds over which ``rival_high`` is the maximum (to within one of ``HIGH_BUCKETS``): as long
as a raise is remembered, so is the price it went to. A ratchet jumps back up about once an hour
at random; an hour's window often sees only its fall and undervalues it."""
HIGH_BUCKETS = 6
REBASE = 100.0
"""Decay times (``half_life / ln 2``) after which the counts' time origin moves up."""


class Contest(NamedTuple):
    """How contested each server has been, aligned with the ids observed."""

    raises_per_hour: np.ndarray
    hands_per_hour: np.ndarray
    rival_high: np.ndarray
    falls_per_hour: np.ndarray
    falls_seen: np.ndarray


class MarketMemory:
    def __init__(self, half_life: float = HALF_LIFE, high_window: float = HIGH_WINDOW) -> None:
        self.tau = half_life / math.log(2.0)
        self.bucket = high_window / HIGH_BUCKETS
        self._highs = np.empty((HIGH_BUCKETS + 1, 0))
        """Per bucket of the last ones (a ring) and server, the best rival's maximum (NaN:
        none); a bucket's row is contiguous."""
        self._older = np.empty(0)
        """Per server, the maximum of ``_highs`` but the newest bucket's (NaN: none)."""
        self._bucket_at: int | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._price = np.empty(0)
        """Per server, the best rival's price when last observed (``NONE``: no rival)."""
        self._raises = np.empty(0)
        self._hands = np.empty(0)
        self._falls = np.empty(0)
        """The decayed event counts, in units of ``_t0``: an event at ``t`` adds
        ``exp((t - _t0) / tau)``, and a count now is the sum times ``exp(-(now - _t0) / tau)``.
        Decaying every count at every observation would cost three passes over all servers."""
        self._first = np.empty(0)
        self._born = np.empty(0)
        """``exp((first - _t0) / tau)`` per server: the decayed time it has been watched, without
        an exponential per server at each observation."""
        self._t0: float | None = None
        self._at: float | None = None
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """The ids of the last observation, their positions and ``_born``: a target's candidates
        rarely change between two decisions."""

    @property
    def servers(self) -> int:
        """How many servers it has seen."""
        return len(self._ids)

    @property
    def observed_at(self) -> float | None:
        """Its latest observation's time (None: none yet)."""
        return self._at

    def observe(self, now: float, server_id: np.ndarray, rival_price: np.ndarray) -> Contest:
        """Take in the best rival's price (NaN: none) on ``server_id`` now (distinct ids, as a
        view's servers are); return their raises, hands and falls per hour, the rival's recent
        high and the falls remembered, as of now."""
        ids = np.asarray(server_id, dtype=np.int64)
        price = np.asarray(rival_price, dtype=np.float64)
        self._at = now if self._at is None else max(self._at, now)
        at = self._at  # a late observation counts as of the latest one
        if self._t0 is None or at - self._t0 > REBASE * self.tau:
            self._rebase(at)
        grow = math.exp((at - self._t0) / self.tau)
        last = self._last
        if last is not None and len(last[0]) == len(ids) and np.array_equal(last[0], ids):
            pos, born = last[1], last[2]
        else:
            self._add(ids, now)
            pos = self._ids.searchsorted(ids)
            born = self._born[pos]
            self._last = (ids.copy(), pos, born)
        self._events(now, pos, price, grow)
        slot = self._roll(now)
        newest = np.fmax(self._highs[slot][pos], price)
        self._highs[slot][pos] = newest
        high = np.fmax(self._older[pos], newest)  # NaN only where no rival was seen
        # the decayed time observed, tau * (1 - exp(-age / tau)), in hours and at least a minute
        hours = np.maximum(self.tau * (1.0 - born / grow), 60.0) / 3600.0
        per_hour = 1.0 / (grow * hours)
        falls = self._falls[pos] / grow
        return Contest(self._raises[pos] * per_hour, self._hands[pos] * per_hour, high,
                       falls / hours, falls)

    def _events(self, now: float, pos: np.ndarray, price: np.ndarray, grow: float) -> None:
        """Count the moves since each server's last observation and keep its price. Between two
        decisions few rivals move, so only the servers whose price changed are worked on."""
        before = self._price[pos]
        now_price = np.fmax(price, NONE)  # NaN (no rival) -> NONE: one exact comparison finds moves
        moved = np.flatnonzero(before != now_price)
        if not len(moved):
            return
        b, p, where = before[moved], now_price[moved], pos[moved]
        had, has = b >= 0.0, p >= 0.0
        both = had & has
        raised = both & (p > b * (1 + TOLERANCE) + TOLERANCE)
        fell = both & (p < b * (1 - TOLERANCE) - TOLERANCE)
        seen = (self._first[where] < now) * grow  # not new this time: a first look is no event
        # a view's servers are distinct, so ``where`` holds no position twice: a plain indexed add
        self._raises[where] += raised * seen
        self._hands[where] += ((had != has) | fell) * seen
        self._falls[where] += fell * seen
        self._price[where] = p

    def _rebase(self, at: float) -> None:
        """Move the counts' time origin to ``at`` (before ``exp`` of the time since grows out of
        range: every ``REBASE`` decay times)."""
        if self._t0 is not None:
            shrink = math.exp(-(at - self._t0) / self.tau)
            for counts in (self._raises, self._hands, self._falls, self._born):
                counts *= shrink
        self._t0 = at
        self._last = None  # its ``_born`` is out of date

    def _roll(self, now: float) -> int:
        """The ring slot of ``now``'s bucket, clearing buckets older than the window."""
        at = int(now // self.bucket)
        size = HIGH_BUCKETS + 1
        if self._bucket_at is not None and at > self._bucket_at:
            for b in range(max(self._bucket_at + 1, at - size + 1), at + 1):
                self._highs[b % size] = np.nan
        if self._bucket_at is None or at > self._bucket_at:
            self._bucket_at = at
            self._older_of(at % size)
        return self._bucket_at % size  # a late observation counts in the newest bucket

    def _older_of(self, newest: int) -> None:
        """Each server's high over the buckets but the ``newest`` slot, worked out once a bucket
        (they do not change until the next) rather than at every observation."""
        self._older = np.fmax.reduce(np.delete(self._highs, newest, axis=0), axis=0)

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
        assert self._t0 is not None
        self._ids = ids_all[order]
        self._price = np.concatenate([self._price, np.full(k, NONE)])[order]
        self._raises = np.concatenate([self._raises, np.zeros(k)])[order]
        self._hands = np.concatenate([self._hands, np.zeros(k)])[order]
        self._falls = np.concatenate([self._falls, np.zeros(k)])[order]
        self._first = np.concatenate([self._first, np.full(k, now)])[order]
        born = math.exp((now - self._t0) / self.tau)
        self._born = np.concatenate([self._born, np.full(k, born)])[order]
        self._highs = np.concatenate([self._highs, np.full((HIGH_BUCKETS + 1, k), np.nan)],
                                     axis=1)[:, order]
        self._older = np.concatenate([self._older, np.full(k, np.nan)])[order]

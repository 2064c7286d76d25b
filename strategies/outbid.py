"""``outbid``: the minimal winning price, held as low as the exchange lets it go."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView, hold_cheapest


SAW_FALLS = 2.0
"""``contested_at`` holds above a rival's high only where the rival's price is a saw: it falls at
least this many times for each raise. A NiceHashBot-style bot steps down every few minutes
between jumps back up (about five falls a raise); a rival repricing at random moves up as often
as down, and its six-hour high is only noise above its price (in ``bench_backtest``'s market,
where every server's rivals jitter so, holding above their highs cost 3.2 % more for 0.4 points
of availability; with this test it costs nothing more and holds more). Only falls count: a rival
that comes and goes (a flickering listing) changes hands without being a saw (counting its
comings and goings made ``contested_at=2,contest_penalty=0.05`` 71 % dearer per held step on the
regression fixture's spot market, 15 % without them)."""


SAW_EVIDENCE = 2.0
"""``contested_at`` also wants the falls remembered (``falls_seen``, decayed) to add up to this:
one fall on a server watched for a minute is a rate of 60 an hour. Decayed, two falls are a little
less than 2, so it takes a third unless the first two came at once; a ratchet shows three within
30 minutes, while a server just come into view (spot polls reach servers one by one) whose rival
moved once or twice does not count. Without it, the regression fixture's spot market cost 4.3 %
more per held step than without market memory; with it, the same."""


class Outbid(Strategy):
    """Bid the minimal winning price plus one tick on the servers where winning is cheapest.

    The default, and the right choice for holding capacity at the lowest price the market allows
    (NiceHashBot's pattern). Each tick it asks for ``max(floor, threshold + tick)``: raised at once
    when outbid, and lowered a full step as soon as the cooldown allows when rivals leave (the
    rules engine lowers as far as the exchange permits). Never above the cap; when holding a
    server would cost more than that, it moves to another.

    Servers are chosen as the cheapest whole-server cover of the count. Moving has a price, so a
    server it holds counts ``switch_margin`` cheaper than the others (and so does one it had to
    leave lately, ``view.left_unusable``: the server it moved to was a stand-in), a new one
    carries its creation fee spread over ``payback_hours``, and a held order that cannot come
    down yet (the cooldown, the learned step) counts at what it will really pay over that
    horizon. With
    market memory (``contested_at``, on by default) a server whose rival's price is a
    NiceHashBot-style saw counts at the saw's recent high, so it is not bought at a trough only
    to be lost at the next jump.
    """

    name = "outbid"

    class Params(base.Params):
        tick: float = Field(0.01, gt=0)
        """How much above the best rival to bid, per server-day in the order currency (the
        default suits CLORE; use a smaller one for bitcoin)."""
        switch_margin: float = Field(0.1, ge=0, lt=1)
        """A new server must be this fraction cheaper than a held one to move. It holds still
        through noise that would otherwise make it chase every small difference (in
        ``bench_backtest``'s noisy market 0.02 costs 1.2-1.4 % more than 0.1, with 40 % more
        orders), at the price of keeping a held server whose host raised its floor by less than
        the margin (``bench_bidding``'s quiet 8-GPU target: README)."""
        payback_hours: float = Field(6.0, gt=0)
        """A move must pay back its new order's creation fee within this many hours (with market
        memory, within the time until the server's next rival raise, when that is sooner)."""
        contest_penalty: float = Field(0.0, ge=0)
        """Each rival raise per hour seen lately on a server makes it count this fraction dearer
        (0: off), and a new order there must pay its creation fee back before the rival's next
        raise is due (``1 / raises_per_hour``). Against a rival that answers every raise, a
        near-equal quiet server wins and the escalation stops."""
        contested_at: float = Field(2.0, ge=0)
        """With market memory: a server whose best rival moved (``raises_per_hour`` plus
        ``falls_per_hour``) at least this often an hour lately, falling at least ``SAW_FALLS``
        times for each raise and ``SAW_EVIDENCE`` times in all, is valued at what holding it
        costs, not at its price now (0: off). A ratchet's price is a saw; a bid at its low points
        is lost at its next jump back up. On such a server the bid is at least the rival's high
        of the last six hours (``rival_high``) plus ``tick``, never above the cap, and servers
        are chosen by that price, so a quiet server cheaper than a contested one's high wins. A
        bot repricing at the exchange's pace moves about six times an hour, a host repricing now
        and then far less than once: 2 tells them apart. The default since 2026-12-03: against
        ratchet bots (``bench_bidding``'s war market) it holds the baseline's availability where
        0 holds 2-3 points less; where rivals only jitter (``bench_backtest``'s market) it
        changes nothing; on the regression fixture's short random walks it costs from 1 % less to
        6 % more per held step on GigaSPOT and the same on spot (README)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.uses_memory = self.params.contest_penalty > 0 or self.params.contested_at > 0

    def limit(self, view: TargetView) -> np.ndarray | None:
        """The most to pay per server-day; None when it cannot be known this tick (no change)."""
        return view.candidates.cap

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid] | None:
        limit = self.limit(view)
        if limit is None:
            return None
        c = view.candidates
        want = np.maximum(c.floor, c.threshold + self.params.tick)
        usable = c.eligible & (want <= limit)
        horizon = self.params.payback_hours * 3600.0
        hold = self.hold_price(view, want)
        bid = want if hold is want else np.minimum(hold, np.maximum(limit, want))
        cost = staying_cost(view, bid, np.where(usable, hold, np.inf), horizon)
        payback: float | np.ndarray = horizon
        if self.params.contest_penalty > 0 and c.raises_per_hour is not None:
            raises = np.fmax(c.raises_per_hour, 0.0)  # NaN (unknown): none
            cost = cost * (1.0 + self.params.contest_penalty * raises)
            # a server whose best rival raises every so often is held only until its next raise:
            # a new order there must pay its creation fee back within that time
            payback = np.minimum(horizon, 3600.0 / np.maximum(raises, 1e-9))
        return hold_cheapest(view, bid, cost, held_discount=self.params.switch_margin,
                             return_discount=self.params.switch_margin, payback=payback)

    def hold_price(self, view: TargetView, want: np.ndarray) -> np.ndarray:
        """What holding each server takes: ``want``, or on a contested server (``contested_at``)
        the rival's recent high plus ``tick`` when that is more."""
        c = view.candidates
        if not self.params.contested_at or c.raises_per_hour is None or c.falls_per_hour is None \
                or c.rival_high is None:
            return want
        raises, falls = np.fmax(c.raises_per_hour, 0.0), np.fmax(c.falls_per_hour, 0.0)
        contested = (raises + falls >= self.params.contested_at) & (falls >= SAW_FALLS * raises)
        if c.falls_seen is not None:
            contested &= c.falls_seen >= SAW_EVIDENCE
        high = np.where(contested, np.fmax(c.rival_high, 0.0) + self.params.tick, 0.0)
        return np.maximum(want, high)


def staying_cost(view: TargetView, want: np.ndarray, cost: np.ndarray,
                 horizon: float) -> np.ndarray:
    """``cost`` with each held server's replaced by what staying there really costs per day over
    ``horizon``: an order above ``want`` pays its price until it may lower (``next_lower_at``),
    then comes down at most to ``lowest_allowed`` when the exchange's step is known."""
    if not view.orders:
        return cost
    c = view.candidates
    rows = c.rows_of([o.server_id for o in view.orders])
    cost = cost.copy()
    for o, row in zip(view.orders, rows.tolist()):
        if row < 0 or not np.isfinite(cost[row]) or o.price <= want[row]:
            continue
        reach = max(float(want[row]), o.lowest_allowed or 0.0)
        lock = min(max(o.next_lower_at - view.now, 0.0), horizon)
        cost[row] = max(cost[row], (o.price * lock + reach * (horizon - lock)) / horizon)
    return cost

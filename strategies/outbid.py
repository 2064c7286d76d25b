"""``outbid``: the minimal winning price, held as low as the exchange lets it go."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView, hold_cheapest


class Outbid(Strategy):
    """Bid the minimal winning price plus one tick on the servers where winning is cheapest.

    The default, and the right choice for holding capacity at the lowest price the market allows
    (NiceHashBot's pattern). Each tick it asks for ``max(floor, threshold + tick)``: raised at once
    when outbid, and lowered a full step as soon as the cooldown allows when rivals leave (the
    rules engine lowers as far as the exchange permits). Never above the cap; when holding a
    server would cost more than that, it moves to another. A server it holds counts
    ``switch_margin`` cheaper than the others, so it does not churn between near-equal servers.
    """

    name = "outbid"

    class Params(base.Params):
        tick: float = Field(0.01, gt=0)
        """How much above the best rival to bid, per server-day in the order currency (the
        default suits CLORE; use a smaller one for bitcoin)."""
        switch_margin: float = Field(0.1, ge=0, lt=1)
        """A new server must be this fraction cheaper than a held one to move."""

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
        return hold_cheapest(view, want, np.where(usable, want, np.inf),
                             held_discount=self.params.switch_margin)

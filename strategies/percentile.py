"""``percentile``: pay what winners recently paid."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView, hold_cheapest


class Percentile(Strategy):
    """Bid a quantile of the winning prices seen on matching servers over a recent window.

    Use it when the market is steady and you would rather pay a typical price than fight for the
    minimum: it does not react to each rival's move, so it makes few price changes. The price per
    GPU-day is ``quantile`` of ``view.recent_wins`` (``history_window`` seconds), at least each
    server's floor and at most the cap, on the cheapest servers where it wins; what it holds is
    kept while that price still wins there. Without history it changes nothing.
    """

    name = "percentile"

    class Params(base.Params):
        quantile: float = Field(0.5, ge=0, le=1)
        """0.5: the median winning price; higher wins more often and pays more."""
        history_window: float = Field(86_400.0, gt=0)
        """Seconds of winning prices to look at."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.history_window = self.params.history_window

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid] | None:
        wins = view.recent_wins[np.isfinite(view.recent_wins)]
        if not len(wins):
            return None
        c = view.candidates
        per_gpu = float(np.quantile(wins, self.params.quantile))
        price = np.minimum(np.maximum(per_gpu * c.gpus, c.floor), c.cap)
        usable = c.eligible & (price >= c.floor) & (price > c.threshold)
        return hold_cheapest(view, price, np.where(usable, price, np.inf), held_discount=1.0)

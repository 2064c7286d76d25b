"""``fixed``: one price per GPU-day, wherever that price wins."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView, hold_cheapest


class Fixed(Strategy):
    """Bid a fixed price per GPU-day on the servers where it wins.

    Use it when you know what the capacity is worth and want a predictable bill rather than the
    lowest price: it never chases rivals, so when the market goes above your price you hold
    less. Servers are taken where winning is cheapest (the price it takes to win, not ours, since
    ours is the same everywhere); what it holds is kept while it is eligible and the price still
    wins there. Never above the cap.
    """

    name = "fixed"

    class Params(base.Params):
        price_per_gpu_day: float = Field(gt=0)
        """Price per GPU-day in the target's order currency."""

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid] | None:
        c = view.candidates
        price = np.minimum(self.params.price_per_gpu_day * c.gpus, c.cap)
        wins = c.eligible & (price >= c.floor) & (price > c.threshold)
        to_win = np.where(wins, np.maximum(c.floor, c.threshold), np.inf)
        return hold_cheapest(view, price, to_win, held_discount=1.0)

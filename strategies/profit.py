"""``profit``: outbid, but never pay more than the capacity earns."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from strategies.base import TargetView
from strategies.outbid import Outbid


class Profit(Outbid):
    """Outbid, with each bid capped at what a GPU-day earns minus fees and a margin.

    Use it for mining or resale, where capacity is only worth its revenue (Hashrate Autopilot's
    pattern): when the market goes above break-even it lets servers go instead of paying to work.
    The limit per GPU-day is ``revenue x (1 - margin) / (1 + fee_fraction)`` (the market's fees
    from the rules), and never above the target's cap. On GigaSPOT the price it takes to win already
    includes our power cost at each machine's energy price (host-profit allocation), so ranking by
    it picks the machines where winning is cheapest.
    """

    name = "profit"

    class Params(Outbid.Params):
        revenue_per_gpu_day: float = Field(gt=0)
        """Expected revenue of one GPU for one day."""
        revenue_currency: Literal["order", "USD"] = "order"
        """``order``: the target's order currency; ``USD``: converted with the API's rate."""
        margin: float = Field(0.0, ge=0, lt=1)
        """Fraction of the revenue to keep as profit."""

    def limit(self, view: TargetView) -> np.ndarray | None:
        p = self.params
        revenue = p.revenue_per_gpu_day
        if p.revenue_currency == "USD":
            if not (math.isfinite(view.usd_per_unit) and view.usd_per_unit > 0):
                return None
            revenue /= view.usd_per_unit
        per_gpu = revenue * (1.0 - p.margin) / (1.0 + view.target.fee_fraction)
        c = view.candidates
        return np.minimum(c.cap, per_gpu * c.gpus)

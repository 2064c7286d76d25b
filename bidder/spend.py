"""What an order costs per day in the budget's currency: one definition for the bot's budget
(unmanaged orders count against it) and for ``bidder status``'s spend line.

Light on purpose (no numpy, no pydantic): ``bidder status`` imports it. The rules engine weighs
its plan with per-target conversions it derives from the same rates (``bidder.rules``).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def cost_per_day(price: float, fee_fraction: float, currency: str, budget_currency: str,
                 usd_rate: Callable[[str], float | None]) -> float:
    """``price`` per day of an order in ``currency`` with the exchange's fee, in
    ``budget_currency``; NaN when a rate the conversion needs is unknown (never 0: an unknown
    cost must not look free)."""
    factor = 1.0
    if currency != budget_currency:
        have, want = usd_rate(currency), usd_rate(budget_currency)
        ok = have is not None and want is not None and 0 < have < math.inf and 0 < want < math.inf
        factor = have / want if ok else math.nan  # type: ignore[operator]
    return price * (1.0 + fee_fraction) * factor

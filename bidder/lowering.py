"""When an order may next be lowered, and the market rules a run recorded: pure and light.

The bot's rules engine (``bidder.rules``) and ``bidder status`` share this maths; status reads the
rules from the run's recorded config without pydantic, numpy or SQLAlchemy (``stored_rules``). The
defaults are the ones ``bidder.config.MarketRules`` declares (it takes them from here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_COOLDOWN = 600.0
"""Seconds between two lowerings of one order."""
DEFAULT_COOLDOWN_FROM_CREATION = True
"""Treat an order's creation as a lowering (safe while the exchange's rule is unknown)."""
DEFAULT_FEE_FRACTION = 0.025
"""Fees on top of the price (spot: about 2.5 %)."""
MIN_PROBE_FRACTION = 0.01
"""A refused GigaSPOT lowering halves the step it tries next, down to this fraction of the price;
below it the order waits a full cooldown instead (the refusal was likely not about the step)."""


def probed_step(price: float, wanted: float) -> float | None:
    """After GigaSPOT refused lowering ``price`` to ``wanted`` without a reason: the lowest price
    to try next (half the step), or None when that step would be under ``MIN_PROBE_FRACTION``
    of the price (wait a cooldown instead). The executor and the backtest's exchange share it."""
    step = (price - wanted) / 2.0
    return None if step < MIN_PROBE_FRACTION * price else price - step


class LoweringRules(Protocol):
    """What ``next_lower_at`` needs of a market's rules (``MarketRules`` or ``StoredRules``)."""

    @property
    def cooldown(self) -> float: ...

    @property
    def cooldown_from_creation(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class StoredRules:
    """The rules ``bidder status`` needs of a market, as a run recorded them."""

    cooldown: float = DEFAULT_COOLDOWN
    cooldown_from_creation: bool = DEFAULT_COOLDOWN_FROM_CREATION
    fee_fraction: float = DEFAULT_FEE_FRACTION


def stored_rules(markets: Mapping[str, Any] | None, market: str) -> StoredRules:
    """``market``'s rules from a run's recorded ``markets`` (``MarketsConfig`` dumped to JSON):
    GigaSPOT falls back to the spot rules when absent, as ``MarketsConfig`` does, and a key a
    run did not record takes its default."""
    markets = markets or {}
    table = markets.get(market)
    if table is None:
        table = markets.get("spot") or {}
    return StoredRules(
        cooldown=float(table.get("cooldown", DEFAULT_COOLDOWN)),
        cooldown_from_creation=bool(table.get("cooldown_from_creation",
                                              DEFAULT_COOLDOWN_FROM_CREATION)),
        fee_fraction=float(table.get("fee_fraction", DEFAULT_FEE_FRACTION)))


def next_lower_at(created_at: float, last_lowered_at: float | None, told_not_before: float | None,
                  rules: LoweringRules) -> float:
    """Earliest time an order may be lowered: ``cooldown`` after its last lowering (its creation
    counts when ``cooldown_from_creation``), and never before what the exchange told us
    (``time_to_lowering``, as an absolute time)."""
    times = [0.0 if told_not_before is None else told_not_before]
    if last_lowered_at is not None:
        times.append(last_lowered_at + rules.cooldown)
    if rules.cooldown_from_creation:
        times.append(created_at + rules.cooldown)
    return max(times)

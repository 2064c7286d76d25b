"""Values fit for strict JSON: numpy scalars as Python numbers, NaN and infinities as null.

Backtest reports, Optuna trial attributes and ``bidder status --json`` all write metrics that may be
NaN (no GPU-hour held, no rate known); strict JSON has no NaN, and a reader must see "unknown"
rather than a number. One definition, importing nothing heavy (``bidder status`` must start fast).
"""

from __future__ import annotations

import math
from typing import Any


def plain(value: Any) -> Any:
    """``value`` with dicts, lists and tuples walked; numpy scalars (anything with ``item``)
    unwrapped; non-finite floats as ``None``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""Put a market history built on one tick grid onto a finer one that contains it.

GigaSPOT history is built on its snapshots' times; replaying a bot run also needs ticks at the
moments its cycles saw spot polls (``load_history(extra_times=...)``). Between two snapshots the
GigaSPOT market does not change, so its changes simply move to the new index of their snapshot's
tick and the added ticks carry none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from bidder.backtest.events import EventStream

if TYPE_CHECKING:  # data.py builds histories with this module
    from bidder.backtest.data import MarketHistory, WinVersions


def tick_map(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Where each of the ``coarse`` tick times stands in ``fine`` (which must contain them all)."""
    where = np.searchsorted(fine, coarse)
    if len(coarse) and (where.max() >= len(fine) or not np.array_equal(fine[where], coarse)):
        raise ValueError("the fine grid must contain every tick of the coarse one")
    return where.astype(np.int64)


def regrid_stream(stream: EventStream, where: np.ndarray, n_ticks: int) -> EventStream:
    """``stream`` with coarse tick ``k``'s events at fine tick ``where[k]``."""
    coarse_before = np.searchsorted(where, np.arange(n_ticks + 1), side="left")
    return replace(stream, start=stream.start[coarse_before])


def regrid_wins(wins: WinVersions, where: np.ndarray, n_ticks: int) -> WinVersions:
    """A version that held from coarse tick ``first`` through ``last`` holds from ``where[first]``
    through the fine tick before the next coarse one."""
    until = np.append(where[1:] - 1, n_ticks - 1)
    return replace(wins, first=where[wins.first], last=until[wins.last])


def regrid_market(market: MarketHistory, where: np.ndarray, n_ticks: int) -> MarketHistory:
    return replace(market, facts=regrid_stream(market.facts, where, n_ticks),
                   state=regrid_stream(market.state, where, n_ticks),
                   rivals=regrid_stream(market.rivals, where, n_ticks),
                   wins=regrid_wins(market.wins, where, n_ticks))

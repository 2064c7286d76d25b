"""Market memory is one implementation: a backtest's views carry the same contest figures
(``raises_per_hour``, ``hands_per_hour``, ``rival_high``) as the live engine's views built from
the same market, decision by decision."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.backtest.runner import RunSettings, Variant, run_variant
from bidder.config import CLORE
from bidder.memory import MarketMemory
from bidder.view import build_target_view
from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView

from bt_helpers import T0, config, history

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))
from engine_frames import Bid, Server, make_frame  # noqa: E402

SEEN: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                 np.ndarray]] = []
"""What ``Watch`` saw, decision by decision (this module's runs only): time, ids, raises, hands,
high, falls per hour, falls remembered."""


class Watch(Strategy):
    """Bids nothing; notes the contest figures of every candidate."""

    name = "watch"
    uses_memory = True

    class Params(base.Params):
        pass

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid]:
        c = view.candidates
        SEEN.append((view.now, c.server_id.copy(), c.raises_per_hour.copy(),
                     c.hands_per_hour.copy(), c.rival_high.copy(), c.falls_per_hour.copy(),
                     c.falls_seen.copy()))
        return []


def _market(n_ticks: int) -> np.ndarray:
    """Server 1: a ratchet's saw (a jump about every 70 minutes, down 10 % every 10); server 2:
    a rival repricing every three hours; server 3: a rival now and then."""
    rival = np.full((n_ticks, 3), np.nan)
    price = 20.0
    for t in range(n_ticks):
        if t % 70 == 0:
            price = 20.0 + (t % 3)
        elif t % 10 == 0:
            price *= 0.9
        rival[t, 0] = round(max(price, 2.0), 4)
        rival[t, 1] = 5.0 + (t // 180) % 2
        rival[t, 2] = 7.0 if (t // 45) % 2 else np.nan
    return rival


def test_backtest_and_live_views_carry_the_same_market_memory():
    rival = _market(8 * 60)
    cfg = config(count=1, cap=100.0)
    SEEN.clear()
    run_variant(history(rival, new_bid_when_price_changes=True), cfg,
                Variant("watch", f"{__name__}:Watch", {}), RunSettings(), "replay")
    assert len(SEEN) == len(rival)

    target = cfg.targets[0]
    live = MarketMemory()
    for t, (now, ids, raises, hands, high, falls, seen) in enumerate(SEEN):
        assert now == pytest.approx(T0 + 60.0 * t)
        servers = [Server(i + 1, floors={CLORE: 1.0}, pl=(100.0, 450.0), energy=0.1,
                          bids=[] if np.isnan(p) else [Bid(float(p), pl=200.0)])
                   for i, p in enumerate(rival[t])]
        frame = make_frame(servers, market="gigaspot", time=now)
        c = build_target_view(frame, target, [], now=now, markets=cfg.markets,
                              memory=live).candidates
        assert c.server_id.tolist() == ids.tolist()
        np.testing.assert_allclose(c.raises_per_hour, raises, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c.hands_per_hour, hands, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c.falls_per_hour, falls, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c.falls_seen, seen, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(c.rival_high, high, rtol=1e-9, equal_nan=True)
    # the figures are the market's, not zeros: the saw is seen as contested, its high kept
    last_raises, last_hands, last_high, last_falls = SEEN[-1][2], SEEN[-1][3], SEEN[-1][4], \
        SEEN[-1][5]
    assert last_raises[0] > 0.5 and last_raises[1] < 0.5
    # the saw steps down; the rival now and then only comes and goes: hands, no falls
    assert last_falls[0] > 2 * last_raises[0] and last_falls[2] == 0.0 < last_hands[2]
    assert SEEN[-1][6][0] > 2.0  # falls enough for outbid's saw test (SAW_EVIDENCE)
    assert last_high[0] >= 20.0 > rival[-1, 0]

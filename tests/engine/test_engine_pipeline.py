"""Frame -> view -> strategy -> rules, as the bot and the backtester chain them."""

import logging

import pytest

from bidder.config import BudgetConfig, MarketsConfig
from bidder.rules import Create, TargetDecision, plan
from bidder.view import build_target_view
from strategies.registry import load_strategy, safe_decide

from engine_frames import NOW, Bid, Server, make_frame, make_target


def gigaspot_market():
    # our pl: 300 W. CLORE at 0.05 $.
    # A: rival 100 CLORE at 100 W, power 0.30 $/kWh -> we must pay (4.28 + 2.16) / 0.05 = 128.8
    # B: rival 110 CLORE at 300 W, power 0.10 $/kWh -> we must pay (4.78 + 0.72) / 0.05 = 110.0
    return make_frame([Server(1, energy=0.30, pl=(100, 400), bids=[Bid(100.0, pl=100)]),
                       Server(2, energy=0.10, pl=(100, 400), bids=[Bid(110.0, pl=300)])],
                      market="gigaspot", clore_usd=0.05)


@pytest.mark.parametrize("allocation, server, price", [("host_profit", 2, 110.5),
                                                        ("highest_price", 1, 100.5)])
def test_profit_wins_where_winning_is_cheapest_under_the_allocation_rule(allocation, server, price):
    markets = MarketsConfig.model_validate({"gigaspot": {"allocation": allocation}})
    target = make_target(name="g", market="gigaspot", max_price_per_gpu_day=150.0)
    view = build_target_view(gigaspot_market(), target, [], now=NOW, markets=markets)
    strategy = load_strategy("profit", {"tick": 0.5, "revenue_per_gpu_day": 200.0})
    desired = safe_decide(strategy, view, logging.getLogger("test"))
    p = plan([TargetDecision(view, desired)], markets, BudgetConfig(), NOW)
    assert p.actions == (Create("g", server, pytest.approx(price)),)

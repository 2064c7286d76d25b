"""The replayed market works rival thresholds out for many ticks at once: exactly the numbers a
view of each tick's frame works out itself (``bidder.allocation.rival_threshold``)."""

import numpy as np
import pytest

from bidder.allocation import rival_threshold
from bidder.backtest import market as replay
from bidder.backtest.data import load_history
from bidder.backtest.market import ReplayMarket
from bidder.config import CLORE, parse_config
from storage.db import open_database

from synthetic_market import write_market

TARGETS = parse_config({"targets": [
    {"name": "any", "market": "gigaspot", "count": 4, "max_price_per_gpu_day": 20,
     "oc": {"pl": 200}}]}).targets


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    path = tmp_path_factory.mktemp("thresholds") / "h.db"
    write_market(path, snapshots=200, machines=30, seed=4)  # with unknown CLORE rates
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        return load_history(session, TARGETS, allocation="host_profit")


@pytest.mark.parametrize("rule", ["host_profit", "highest_price"])
@pytest.mark.parametrize("our_pl", [200.0, None])
def test_thresholds_are_those_of_each_ticks_frame(history, monkeypatch, rule, our_pl):
    monkeypatch.setattr(replay, "THRESHOLD_BLOCK", 7)  # blocks end mid-run, the last one short
    market = ReplayMarket(history, history.markets["gigaspot"])
    assert np.isnan(history.clore_usd).any()
    for tick in [*range(0, 40), *range(41, history.n_ticks, 3)]:  # also skipping ticks
        market.advance(tick)
        frame = market.frame(float(history.time[tick]), market.rivals["price"])
        expected = rival_threshold(
            rule, bid_start=frame.bid_start, bid_price=frame.bid_price, bid_pl=frame.bid_pl,
            bid_mine=frame.bid_mine, gpus=frame.gpus, energy_price=frame.energy_price,
            clore_usd=frame.clore_usd, our_pl=our_pl, floor=frame.floor(CLORE))
        for got, want in zip(market.thresholds(rule, our_pl, CLORE), expected):
            np.testing.assert_array_equal(got, want)
    no_floor = rival_threshold(  # a currency the market does not take: no floor binds
        rule, bid_start=frame.bid_start, bid_price=frame.bid_price, bid_pl=frame.bid_pl,
        bid_mine=frame.bid_mine, gpus=frame.gpus, energy_price=frame.energy_price,
        clore_usd=frame.clore_usd, our_pl=our_pl, floor=frame.floor("BTC"))
    for got, want in zip(market.thresholds(rule, our_pl, "BTC"), no_floor):
        np.testing.assert_array_equal(got, want)


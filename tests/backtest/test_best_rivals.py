"""The best rival per server and tick, found span by span, against a plain tick-by-tick search.

The loader ranks the bids of a span of ticks at the span's lowest and highest CLORE rates only;
the reference below ranks every bid at every tick by the documented rule: the highest allocation
score (the price where the score is unknown) among the rival bids at or above the floor, ties to
the lower bid id. The market is built for ties (few price levels and power limits) and for rivals
swapping places as the CLORE rate swings.
"""

import numpy as np
import pytest

from bidder.allocation import bid_scores
from bidder.backtest import data
from bidder.backtest.data import FLOOR, load_history
from bidder.config import CLORE, parse_config
from storage.db import open_database
from storage.history import bid_intervals

from synthetic_market import ME, history_digest, write_market

TARGETS = parse_config({"targets": [
    {"name": "any", "market": "gigaspot", "count": 4, "max_price_per_gpu_day": 50,
     "oc": {"pl": 200}}]}).targets
COLUMNS = ("price", "pl", "bid_id", "birth", "cap_hint")


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    path = tmp_path_factory.mktemp("rivals") / "h.db"
    write_market(path, snapshots=300, machines=24, seed=5, tie_prone=True)
    return f"sqlite:///{path}"


def load(url, allocation):
    with open_database(url, writer=False) as db, db.sessions() as session:
        return load_history(session, TARGETS, allocation=allocation)


def reference(url, history, allocation):
    """Per tick, the best rival's columns per candidate, by brute force."""
    market = history.markets["gigaspot"]
    n, n_ticks = market.n_servers, history.n_ticks
    with open_database(url, writer=False) as db, db.sessions() as session:
        bids = bid_intervals(session, None, None)
    row = np.searchsorted(market.server_id, bids.machine_id)
    clore_code = bids.currencies.index(CLORE)
    rival = (bids.owner != ME) & (bids.currency == clore_code)
    birth = {b: bids.first[bids.bid_id == b].min() for b in np.unique(bids.bid_id[rival])}
    cap = {b: bids.price[bids.bid_id == b].max() for b in birth}
    state = market.state.dense(0, n_ticks, market.state.initial)
    gpus = market.facts.dense(0, n_ticks, market.facts.initial)["gpus"]
    out = {c: np.full((n_ticks, n), np.nan) for c in COLUMNS}
    for t in range(n_ticks):
        live = np.flatnonzero(rival & (bids.first <= t) & (bids.last >= t))
        for r in range(n):
            mine = live[row[live] == r]
            floor = state[f"{FLOOR}{CLORE}"][t, r]
            mine = mine[bids.price[mine] >= floor]  # a NaN floor takes none
            if not len(mine):
                continue
            score = bid_scores(allocation, bids.price[mine], bids.pl[mine],
                               np.full(len(mine), gpus[t, r]),
                               np.full(len(mine), state["energy_price"][t, r]),
                               history.clore_usd[t])
            rank = np.where(np.isnan(score), bids.price[mine], score)
            best = mine[np.lexsort((bids.bid_id[mine], -rank))[0]]
            b = bids.bid_id[best]
            for c, value in zip(COLUMNS, (bids.price[best], bids.pl[best], b, birth[b], cap[b])):
                out[c][t, r] = value
    return out


@pytest.mark.parametrize("allocation", ["host_profit", "highest_price"])
def test_the_best_rival_is_the_one_a_tick_by_tick_search_finds(market, allocation):
    history = load(market, allocation)
    rivals = history.markets["gigaspot"].rivals
    found = rivals.dense(0, history.n_ticks, rivals.initial)
    expected = reference(market, history, allocation)
    assert np.isfinite(expected["price"]).mean() > 0.3  # the market has rivals to find
    for c in COLUMNS:
        got = np.where(found["bid_id"] >= 0, found[c], np.nan).astype(np.float64)
        np.testing.assert_array_equal(got, expected[c], err_msg=c)


def test_ranking_every_span_tick_by_tick_changes_nothing(market, monkeypatch):
    """The shortcut (rank a span at its two extreme rates) against no shortcut at all."""
    shortcut = history_digest(load(market, "host_profit"))
    monkeypatch.setattr(data, "RANK_TOLERANCE", np.inf)
    assert history_digest(load(market, "host_profit")) == shortcut

"""The allocation maths, checked against numbers worked out by hand."""

import numpy as np
import pytest

from bidder.allocation import (
    power_cost_usd_per_day,
    rival_threshold,
    segment_max,
    winning_bids,
)


def test_power_cost():
    # 2 GPUs at 300 W for 24 h = 14.4 kWh; at 0.10 $/kWh = 1.44 $/day
    assert power_cost_usd_per_day(300, 2, 0.10) == pytest.approx(1.44)


def test_segment_max_handles_empty_segments():
    out = segment_max(np.array([1.0, 5.0, 2.0]), np.array([0, 2, 2, 3, 3]))
    assert out.tolist() == [5.0, -np.inf, 2.0, -np.inf]


# two servers; server 0 has a rival (price 10, pl 200) and our bid; server 1 has no bids
BIDS = dict(
    bid_start=np.array([0, 2, 2]),
    bid_price=np.array([10.0, 12.0]),
    bid_pl=np.array([200.0, 300.0]),
    bid_mine=np.array([False, True]),
    gpus=np.array([2, 1]),
    energy_price=np.array([0.10, 0.05]),
)


def test_threshold_highest_price_ignores_our_own_bid():
    thr, rival = rival_threshold("highest_price", clore_usd=0.02, our_pl=None, **BIDS)
    assert thr.tolist() == [10.0, 0.0]
    assert rival[0] == 10.0 and np.isnan(rival[1])


def test_threshold_host_profit_by_hand():
    # rival score: 10 CLORE x 0.02 $ - 200 W x 2 GPUs x 24 h / 1000 x 0.10 $ = 0.2 - 0.96 = -0.76 $/day
    # our power cost at 300 W: 300 x 2 x 24 / 1000 x 0.10 = 1.44 $/day
    # to beat the rival: p x 0.02 - 1.44 > -0.76  =>  p > 0.68 / 0.02 = 34 CLORE/day
    thr, rival = rival_threshold("host_profit", clore_usd=0.02, our_pl=300, **BIDS)
    assert thr[0] == pytest.approx(34.0)
    assert thr[1] == 0.0
    assert rival[0] == 10.0


def test_threshold_host_profit_without_rate_is_nan():
    thr, _ = rival_threshold("host_profit", clore_usd=float("nan"), our_pl=300, **BIDS)
    assert np.isnan(thr[0]) and thr[1] == 0.0


def test_winner_highest_score_ties_to_lower_id_and_floor_applies():
    common = dict(bid_start=np.array([0, 3, 5]), gpus=np.array([1, 1]), energy_price=np.array([0.1, 0.1]),
                  clore_usd=0.02, eligible=np.array([True, True]))
    won = winning_bids(
        "highest_price",
        bid_id=np.array([7, 5, 9, 1, 2]),
        bid_price=np.array([5.0, 5.0, 4.0, 1.0, 3.0]),
        bid_pl=np.full(5, 100.0),
        floor=np.array([1.0, 3.5]),
        **common,
    )
    # server 0: the two 5.0 bids tie -> id 5 (index 1); server 1: only the 3.0 bid ... is under 3.5
    assert won.tolist() == [1, -1]


def test_winner_host_profit_prefers_low_power():
    won = winning_bids(
        "host_profit",
        bid_start=np.array([0, 2]),
        bid_id=np.array([1, 2]),
        bid_price=np.array([30.0, 25.0]),
        bid_pl=np.array([400.0, 100.0]),
        gpus=np.array([1]),
        energy_price=np.array([0.2]),
        floor=np.array([1.0]),
        clore_usd=0.02,
        eligible=np.array([True]),
    )
    # 30*0.02 - 400*24/1000*0.2 = 0.6 - 1.92 = -1.32 ; 25*0.02 - 100*24/1000*0.2 = 0.5 - 0.48 = 0.02
    assert won.tolist() == [1]


def test_ineligible_server_has_no_winner():
    won = winning_bids(
        "highest_price", bid_start=np.array([0, 1]), bid_id=np.array([1]), bid_price=np.array([9.0]),
        bid_pl=np.array([100.0]), gpus=np.array([1]), energy_price=np.array([0.1]), floor=np.array([1.0]),
        clore_usd=0.02, eligible=np.array([False]),
    )
    assert won.tolist() == [-1]


def test_rival_under_the_floor_cannot_win_and_is_ignored():
    # the rival bids 10 with a tiny power limit: a great host-profit score, but under the floor of 11
    args = dict(BIDS, bid_pl=np.array([10.0, 300.0]))
    thr_all, _ = rival_threshold("host_profit", clore_usd=0.02, our_pl=300, **args)
    thr, rival = rival_threshold("host_profit", clore_usd=0.02, our_pl=300,
                                 floor=np.array([11.0, 1.0]), **args)
    assert thr_all[0] > 0
    assert thr.tolist() == [0.0, 0.0] and np.isnan(rival).all()


@pytest.mark.parametrize("rule", ["highest_price", "host_profit"])
@pytest.mark.parametrize("seed", range(5))
def test_one_bid_per_server_gives_what_the_general_path_gives(rule, seed):
    """Servers with one bid each take a shortcut; adding one of our own bids (never a rival)
    forces the general per-server reductions, which must agree bit for bit."""
    rng = np.random.default_rng(seed)
    n = 40
    has = rng.random(n) < (0.7 if seed % 2 else 1.0)  # some servers without a bid, or none
    k = int(has.sum())
    one = dict(bid_start=np.concatenate([[0], np.cumsum(has)]), bid_price=rng.uniform(1, 20, k),
               bid_pl=rng.choice([150.0, 250.0, np.nan], k), bid_mine=rng.random(k) < 0.1,
               gpus=rng.choice([1, 2, 8], n), energy_price=rng.choice([0.05, 0.2, np.nan], n))
    floor = np.where(rng.random(n) < 0.1, np.nan, rng.uniform(1, 15, n))
    clore = float(rng.choice([0.03, np.nan]))
    extra = int(np.flatnonzero(has)[0])  # the server that gets our extra bid
    at = int(one["bid_start"][extra])
    forced = dict(one, bid_start=one["bid_start"] + (np.arange(n + 1) > extra),
                  bid_price=np.insert(one["bid_price"], at, 99.0),
                  bid_pl=np.insert(one["bid_pl"], at, 300.0),
                  bid_mine=np.insert(one["bid_mine"], at, True))
    for kw in (dict(floor=floor), {}):
        fast = rival_threshold(rule, clore_usd=clore, our_pl=200.0, **one, **kw)
        general = rival_threshold(rule, clore_usd=clore, our_pl=200.0, **forced, **kw)
        for a, b in zip(fast, general):
            np.testing.assert_array_equal(a, b)

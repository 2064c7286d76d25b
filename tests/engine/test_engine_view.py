import math

import numpy as np
import pytest

from bidder.config import CLORE, MarketsConfig
from bidder.view import StaticMatchCache, build_target_view, static_match
from strategies.base import OwnOrder

from engine_frames import NOW, Bid, Server, make_frame, make_target

MARKETS = MarketsConfig()


def view_of(frame, target, orders=(), markets=MARKETS, **kw):
    return build_target_view(frame, target, list(orders), now=NOW, markets=markets, **kw)


def test_filters_keep_only_matching_rentable_servers_with_a_floor():
    servers = [
        Server(1),                                            # matches
        Server(2, model="RTX 3090"),                          # wrong model
        Server(3, model="nvidia geforce rtx 4090 D"),        # case-insensitive substring
        Server(4, gpus=8),                                    # too many GPUs
        Server(5, reliability=0.5),                           # unreliable
        Server(6, reliability=float("nan")),                  # reliability unknown
        Server(7, working=False),
        Server(8, country="US"),                              # country not allowed
        Server(9),                                            # excluded by id
        Server(10, online=False),
        Server(11, rentable=False),
        Server(12, floors={"bitcoin": 0.0001}),               # no floor in CLORE
        Server(13, gpus=2, country="FR"),
    ]
    target = make_target(gpu_model="rtx 4090", min_reliability=0.9, max_gpus_per_server=4,
                         countries=["de", "fr"], exclude_servers=[9])
    c = view_of(make_frame(servers), target).candidates
    assert c.server_id.tolist() == [1, 3, 13]
    assert c.eligible.all()
    assert c.cap.tolist() == [30.0, 30.0, 60.0]
    assert c.floor.tolist() == [10.0, 10.0, 10.0]


def test_unknown_reliability_passes_a_zero_minimum_and_non_working_servers_when_allowed():
    servers = [Server(1, reliability=float("nan")), Server(2, working=False)]
    c = view_of(make_frame(servers), make_target(working_properly_only=False)).candidates
    assert c.server_id.tolist() == [1, 2]


def test_gigaspot_power_limit_must_fit_the_machine():
    servers = [Server(1, pl=(150, 450)), Server(2, pl=(70, 250)), Server(3)]
    frame = make_frame(servers, market="gigaspot")
    c = view_of(frame, make_target(market="gigaspot")).candidates  # pl 300
    assert c.server_id.tolist() == [1]


def test_spot_threshold_is_the_best_rival_bid_ignoring_ours():
    servers = [Server(1, bids=[Bid(12.0), Bid(15.0), Bid(40.0, mine=True)]), Server(2)]
    c = view_of(make_frame(servers), make_target()).candidates
    assert c.threshold.tolist() == [15.0, 0.0]
    assert c.rival_price[0] == 15.0 and math.isnan(c.rival_price[1])


def gigaspot_machine():
    # 2 GPUs at 0.10 $/kWh, CLORE at 0.05 $; our pl is 300 W per GPU.
    return make_frame([Server(7, gpus=2, energy=0.10, pl=(100, 400),
                              bids=[Bid(100.0, pl=200), Bid(105.0, pl=400), Bid(120.0, mine=True, pl=300)])],
                      market="gigaspot", clore_usd=0.05)


def test_gigaspot_threshold_under_host_profit_includes_the_power_costs():
    c = view_of(gigaspot_machine(), make_target(market="gigaspot")).candidates
    # rival A: 100 x 0.05 - 200 W x 2 x 24 h / 1000 x 0.10 = 5.00 - 0.96 = 4.04 $/day
    # rival B: 105 x 0.05 - 400 W x 2 x 24 h / 1000 x 0.10 = 5.25 - 1.92 = 3.33 $/day
    # ours must beat 4.04 after our own power cost 300 x 2 x 24 / 1000 x 0.10 = 1.44:
    # price > (4.04 + 1.44) / 0.05 = 109.6 CLORE
    assert c.threshold[0] == pytest.approx(109.6)
    assert c.rival_price[0] == 100.0


def test_gigaspot_threshold_under_highest_price_is_the_best_rival_price():
    markets = MarketsConfig.model_validate({"gigaspot": {"allocation": "highest_price"}})
    c = view_of(gigaspot_machine(), make_target(market="gigaspot"), markets=markets).candidates
    assert c.threshold[0] == 105.0 and c.rival_price[0] == 105.0


def test_spot_ignores_the_gigaspot_allocation_rule():
    markets = MarketsConfig.model_validate({"gigaspot": {"allocation": "host_profit"}})
    frame = make_frame([Server(1, energy=0.5, bids=[Bid(20.0, pl=300)])], clore_usd=0.05)
    assert view_of(frame, make_target(), markets=markets).candidates.threshold[0] == 20.0


def test_usd_cap_is_converted_with_the_frames_rate():
    target = make_target(max_price_per_gpu_day=1.5, cap_currency="USD")
    view = view_of(make_frame([Server(1, gpus=2)], clore_usd=0.05), target)
    assert view.target.cap_per_gpu_day == pytest.approx(30.0)
    assert view.candidates.cap[0] == pytest.approx(60.0)
    assert view.usd_per_unit == 0.05


def test_usd_cap_with_an_unknown_rate_leaves_no_candidate():
    target = make_target(max_price_per_gpu_day=1.5, cap_currency="USD")
    view = view_of(make_frame([Server(1)], clore_usd=float("nan"), rates={}), target)
    assert math.isnan(view.target.cap_per_gpu_day)
    assert len(view.candidates) == 0


def test_servers_of_our_orders_are_always_rows():
    servers = [Server(1), Server(2, model="RTX 3090", bids=[Bid(11.0), Bid(14.0, mine=True)]),
               Server(3, gpus=2)]
    orders = [OwnOrder(2, 14.0, 1, "winning", NOW - 100, order_id=20),
              OwnOrder(99, 22.0, 2, "outbid", NOW - 100, order_id=21)]
    view = view_of(make_frame(servers), make_target(gpu_model="4090"), orders)
    c = view.candidates
    assert c.server_id.tolist() == [1, 2, 3, 99]
    assert c.eligible.tolist() == [True, False, True, False]
    assert c.threshold[1] == 11.0                  # still priced, only not eligible
    row = c.row(99)
    assert c.gpus[row] == 2 and c.cap[row] == 60.0
    assert np.isnan([c.floor[row], c.threshold[row], c.reliability[row], c.observed_at[row]]).all()
    assert view.orders == tuple(orders)


def test_recent_wins_and_static_mask_pass_through():
    frame = make_frame([Server(1), Server(2, model="RTX 3090")])
    target = make_target(gpu_model="3090")
    static = static_match(frame, target)
    assert static.tolist() == [False, True]
    wins = np.array([1.0, 2.0])
    view = view_of(frame, target, static=static, recent_wins=wins)
    assert view.candidates.server_id.tolist() == [2]
    assert view.recent_wins is wins
    with pytest.raises(ValueError, match="static mask has 1 rows for a frame of 2"):
        view_of(frame, target, static=static[:1])


def test_a_frame_of_another_market_is_refused():
    with pytest.raises(ValueError, match="target 't' is on gigaspot, the frame is spot"):
        view_of(make_frame([Server(1)]), make_target(market="gigaspot"))


def test_static_match_cache_matches_once_per_server_list():
    cache = StaticMatchCache()
    target = make_target(gpu_model="3090")
    first = make_frame([Server(1), Server(2, model="RTX 3090")])
    mask = cache.get(first, target)
    same_servers = make_frame([Server(1, online=False), Server(2, model="RTX 3090")], time=NOW + 60)
    assert cache.get(same_servers, target) is mask
    changed = make_frame([Server(1, model="RTX 3090"), Server(2, model="RTX 3090")])
    assert cache.get(changed, target).tolist() == [True, True]
    other = make_target(name="u", gpu_model="4090")
    assert cache.get(changed, other).tolist() == [False, False]

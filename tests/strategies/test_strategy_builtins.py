import numpy as np
import pytest

from strategies.base import cheapest_cover
from strategies.fixed import Fixed
from strategies.outbid import Outbid
from strategies.percentile import Percentile
from strategies.profit import Profit

from strategy_views import bids, held, make_view

# --- outbid ---------------------------------------------------------------------------------------


def outbid(**kw):
    return Outbid(**{"tick": 0.5, **kw})


def test_outbid_raises_at_once_when_outbid():
    view = make_view([{"id": 1, "threshold": 15.0}, {"id": 2, "threshold": 17.0}],
                     orders=(held(1, 12.0, state="outbid"),))
    assert bids(outbid().decide(view)) == {1: 15.5}


def test_outbid_steps_down_to_the_floor_when_rivals_leave():
    view = make_view([{"id": 1, "threshold": 0.0}], orders=(held(1, 20.0),))
    assert bids(outbid().decide(view)) == {1: 10.0}


def test_outbid_moves_when_holding_costs_more_than_the_cap():
    view = make_view([{"id": 1, "threshold": 35.0}, {"id": 2, "threshold": 12.0}],
                     orders=(held(1, 29.0),))
    assert bids(outbid().decide(view)) == {2: 12.5}


def test_outbid_leaves_a_server_that_no_longer_matches():
    view = make_view([{"id": 1, "eligible": False}, {"id": 2, "threshold": 12.0}],
                     orders=(held(1, 10.0),))
    assert bids(outbid().decide(view)) == {2: 12.5}


def test_outbid_picks_the_cheapest_servers_by_minimal_winning_price():
    view = make_view([{"id": 1, "threshold": 20.0}, {"id": 2, "threshold": 5.0},
                      {"id": 3, "threshold": 12.0}], count=2)
    assert bids(outbid().decide(view)) == {2: 10.0, 3: 12.5}


def test_outbid_does_not_churn_within_the_switch_margin():
    rows = [{"id": 1, "threshold": 12.0}, {"id": 2, "threshold": 11.5}]
    view = make_view(rows, orders=(held(1, 12.5),))
    assert bids(outbid(switch_margin=0.1).decide(view)) == {1: 12.5}      # 12.0 > 12.5 x 0.9
    assert bids(outbid(switch_margin=0.0).decide(view)) == {2: 12.0}
    cheaper = make_view([*rows, {"id": 3, "threshold": 10.5}], orders=(held(1, 12.5),))
    assert bids(outbid(switch_margin=0.1).decide(cheaper)) == {3: 11.0}   # 11.0 < 11.25


def test_outbid_holds_nothing_when_nothing_is_under_the_cap():
    view = make_view([{"id": 1, "threshold": 31.0}, {"id": 2, "floor": 40.0}])
    assert outbid().decide(view) == []


# --- filling the count ----------------------------------------------------------------------------


def test_count_is_filled_with_fewer_servers_at_equal_price():
    view = make_view([{"id": i} for i in range(1, 5)] + [{"id": 9, "gpus": 4, "floor": 40.0}], count=4)
    assert bids(outbid().decide(view)) == {9: 40.0}


def test_count_is_not_overshot_by_a_whole_server_when_avoidable():
    view = make_view([{"id": i} for i in range(1, 5)] + [{"id": 9, "gpus": 4, "floor": 40.0}], count=3)
    assert bids(outbid().decide(view)) == {1: 10.0, 2: 10.0, 3: 10.0}


def test_a_big_cheap_server_beats_several_dear_small_ones():
    view = make_view([{"id": i, "floor": 11.0} for i in range(1, 5)] + [{"id": 9, "gpus": 4, "floor": 32.0}],
                     count=3)
    assert bids(outbid().decide(view)) == {9: 32.0}


def test_count_in_servers_ignores_their_size():
    view = make_view([{"id": 1, "gpus": 8, "floor": 12.0}, {"id": 2, "floor": 11.0},
                      {"id": 3, "gpus": 2, "floor": 15.0}], count=2, unit="servers")
    assert bids(outbid().decide(view)) == {2: 11.0, 1: 12.0}


def test_short_supply_holds_what_there_is():
    view = make_view([{"id": 1}, {"id": 2, "gpus": 2, "floor": 12.0}], count=5)
    assert bids(outbid().decide(view)) == {1: 10.0, 2: 12.0}


def test_cheapest_cover_mixes_sizes_without_overshooting():
    sizes = np.array([2, 2, 1, 4])
    costs = np.array([20.0, 21.0, 9.0, np.inf])
    assert sorted(cheapest_cover(3, sizes, costs).tolist()) == [0, 2]
    assert cheapest_cover(2, sizes, np.full(4, np.nan)).tolist() == []


# --- profit ---------------------------------------------------------------------------------------


def test_profit_caps_bids_at_revenue_minus_fees_and_margin():
    strategy = Profit(tick=0.5, revenue_per_gpu_day=20.0, margin=0.1)
    view = make_view([{"id": 1, "threshold": 17.5}, {"id": 2, "threshold": 16.5},
                      {"id": 3, "gpus": 2, "threshold": 34.0}], fee_fraction=0.025, count=4)
    # limit per GPU: 20 x 0.9 / 1.025 = 17.56; server 1 needs 18.0, server 3 needs 17.25 per GPU
    assert bids(strategy.decide(view)) == {2: 17.0, 3: 34.5}


def test_profit_revenue_in_usd_uses_the_rate_and_waits_when_it_is_unknown():
    strategy = Profit(tick=0.5, revenue_per_gpu_day=1.0, revenue_currency="USD")
    rows = [{"id": 1, "threshold": 19.0}, {"id": 2, "threshold": 20.0}]
    assert bids(strategy.decide(make_view(rows, usd_per_unit=0.05, count=2))) == {1: 19.5}
    assert strategy.decide(make_view(rows, usd_per_unit=float("nan"))) is None


def test_profit_never_bids_above_the_cap():
    strategy = Profit(tick=0.5, revenue_per_gpu_day=100.0)
    view = make_view([{"id": 1, "threshold": 31.0}, {"id": 2, "threshold": 29.0}], count=2)
    assert bids(strategy.decide(view)) == {2: 29.5}


def test_profit_on_gigaspot_wins_where_winning_is_cheapest_for_us():
    # host-profit thresholds: machine 1's rival bids less but its power is dear, so beating it costs more
    strategy = Profit(tick=0.5, revenue_per_gpu_day=200.0)
    view = make_view([{"id": 1, "threshold": 110.0}, {"id": 2, "threshold": 106.0}],
                     market="gigaspot", cap_per_gpu_day=150.0)
    view.candidates.rival_price[:] = [100.0, 105.0]
    assert bids(strategy.decide(view)) == {2: 106.5}


# --- fixed ----------------------------------------------------------------------------------------


def test_fixed_bids_its_price_where_winning_is_cheapest():
    view = make_view([{"id": 1, "threshold": 11.0}, {"id": 2, "threshold": 13.0},
                      {"id": 3, "floor": 15.0}, {"id": 4, "gpus": 2, "threshold": 5.0}], count=3)
    assert bids(Fixed(price_per_gpu_day=12.0).decide(view)) == {4: 24.0, 1: 12.0}


def test_fixed_never_bids_above_the_cap():
    view = make_view([{"id": 1, "threshold": 25.0}])
    assert bids(Fixed(price_per_gpu_day=40.0).decide(view)) == {1: 30.0}


def test_fixed_keeps_what_it_holds_while_it_still_wins_there():
    rows = [{"id": 1, "threshold": 11.0}, {"id": 2}]
    assert bids(Fixed(price_per_gpu_day=12.0).decide(make_view(rows, orders=(held(1, 12.0),)))) == {1: 12.0}
    outbid_now = [{"id": 1, "threshold": 13.0}, {"id": 2}]
    assert bids(Fixed(price_per_gpu_day=12.0).decide(make_view(outbid_now, orders=(held(1, 12.0),)))) == {2: 12.0}


# --- percentile -----------------------------------------------------------------------------------


WINS = np.array([10.0, 12.0, 14.0, 16.0, 18.0, np.nan])


def test_percentile_bids_the_quantile_of_recent_wins_where_it_wins():
    view = make_view([{"id": 1, "threshold": 15.0}, {"id": 2, "gpus": 2, "threshold": 20.0},
                      {"id": 3, "floor": 20.0}], recent_wins=WINS, count=3)
    assert bids(Percentile(quantile=0.5).decide(view)) == {2: 28.0, 3: 20.0}
    assert bids(Percentile(quantile=0.9).decide(view)) == {1: 17.2, 2: 34.4}


def test_percentile_price_is_capped_and_needs_history():
    view = make_view([{"id": 1}], recent_wins=np.array([50.0]))
    assert bids(Percentile().decide(view)) == {1: 30.0}
    assert Percentile().decide(make_view([{"id": 1}])) is None


def test_percentile_window_is_a_parameter():
    assert Percentile(history_window=3600).history_window == 3600
    assert Percentile().history_window == pytest.approx(86_400)


# --- a held server whose price to win is unknown this tick -----------------------------------------


@pytest.mark.parametrize("strategy", [
    outbid(), Fixed(price_per_gpu_day=12.0), Percentile(quantile=0.5),
    Profit(revenue_per_gpu_day=25.0, tick=0.5)], ids=lambda s: s.name)
def test_a_held_server_of_unknown_threshold_is_kept_at_its_price(strategy):
    """Not knowing the price to win (a rival's currency without a rate) is no reason to cancel,
    pay a creation fee and start a new cooldown elsewhere; a server we do not hold is not bought
    blind."""
    rows = [{"id": 1, "threshold": np.nan}, {"id": 2, "threshold": 5.0},
            {"id": 3, "threshold": np.nan}]
    view = make_view(rows, orders=(held(1, 11.0),), recent_wins=WINS)
    assert bids(strategy.decide(view)) == {1: 11.0}
    nothing_held = make_view(rows, recent_wins=WINS)
    assert 1 not in bids(strategy.decide(nothing_held))
    assert 3 not in bids(strategy.decide(nothing_held))


def test_a_held_server_of_unknown_threshold_is_still_left_when_it_no_longer_matches():
    rows = [{"id": 1, "threshold": np.nan, "eligible": False}, {"id": 2, "threshold": 12.0}]
    view = make_view(rows, orders=(held(1, 11.0),))
    assert bids(outbid().decide(view)) == {2: 12.5}


def test_a_held_server_of_unknown_threshold_is_kept_at_most_at_the_cap():
    view = make_view([{"id": 1, "threshold": np.nan}], orders=(held(1, 45.0),))
    assert bids(outbid().decide(view)) == {1: 30.0}


def test_an_outbid_order_of_unknown_threshold_is_left_there_is_no_price_to_raise_to():
    rows = [{"id": 1, "threshold": np.nan}, {"id": 2, "threshold": 12.0}]
    view = make_view(rows, orders=(held(1, 11.0, state="outbid"),))
    assert bids(outbid().decide(view)) == {2: 12.5}

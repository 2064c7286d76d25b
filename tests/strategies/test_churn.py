"""What leaving a server costs: the creation fee over a payback horizon, a held order that
cannot come down yet, and the rebuy block after our own cancel."""

from dataclasses import replace

from strategies.base import OwnOrder
from strategies.outbid import Outbid

from strategy_views import NOW, bids, held, make_view


def outbid(**kw):
    return Outbid(**{"tick": 0.5, "switch_margin": 0.0, **kw})


def with_spec(view, **kw):
    return replace(view, target=replace(view.target, **kw))


def test_a_move_must_pay_back_its_creation_fee_within_the_horizon():
    rows = [{"id": 1, "threshold": 12.0}, {"id": 2, "threshold": 11.0}]
    view = with_spec(make_view(rows, orders=(held(1, 12.5),)), creation_fee=0.5)
    # moving saves 1.0 per day; the fee over 6 h is 2.0 per day, over 24 h 0.5 per day
    assert bids(outbid(payback_hours=6).decide(view)) == {1: 12.5}
    assert bids(outbid(payback_hours=24).decide(view)) == {2: 11.5}
    assert bids(outbid(payback_hours=6).decide(with_spec(view, creation_fee=0.0))) == {2: 11.5}


def test_the_fee_makes_fewer_orders_win_at_equal_price():
    rows = [{"id": 1}, {"id": 2}, {"id": 3, "gpus": 2, "floor": 20.1}]
    view = make_view(rows, count=2)
    assert bids(outbid().decide(view)) == {1: 10.0, 2: 10.0}
    # one order instead of two saves a fee of 0.1, 0.4 per day over 6 h: more than 0.1 per day
    assert bids(outbid().decide(with_spec(view, creation_fee=0.1))) == {3: 20.1}


def test_a_held_order_that_cannot_lower_yet_counts_at_what_it_will_pay():
    rows = [{"id": 1, "threshold": 9.0}, {"id": 2, "threshold": 12.0}]
    locked = OwnOrder(1, 30.0, 1, "winning", NOW - 60, order_id=7, next_lower_at=NOW + 6 * 3600,
                      lowest_allowed=27.0)
    free = replace(locked, next_lower_at=NOW - 1, lowest_allowed=None)
    # locked for the whole horizon at 30 per day: moving to 12.5 pays
    assert bids(outbid(payback_hours=6).decide(make_view(rows, orders=(locked,)))) == {2: 12.5}
    # free to lower to 10 now: stay
    assert bids(outbid(payback_hours=6).decide(make_view(rows, orders=(free,)))) == {1: 10.0}


def test_a_server_we_left_is_not_bought_back_within_the_block():
    rows = [{"id": 1, "threshold": 9.0}, {"id": 2, "threshold": 12.0}]
    view = replace(with_spec(make_view(rows), rebuy_block=3600.0), left_at={1: NOW - 600})
    assert bids(outbid().decide(view)) == {2: 12.5}
    after = replace(view, left_at={1: NOW - 3601})
    assert bids(outbid().decide(after)) == {1: 10.0}
    unblocked = with_spec(view, rebuy_block=0.0)
    assert bids(outbid().decide(unblocked)) == {1: 10.0}


def test_the_block_gives_way_when_nothing_else_meets_the_count():
    rows = [{"id": 1, "threshold": 9.0}, {"id": 2, "threshold": 12.0}]
    view = replace(with_spec(make_view(rows, count=2), rebuy_block=3600.0),
                   left_at={1: NOW - 600})
    assert bids(outbid().decide(view)) == {1: 10.0, 2: 12.5}


def test_a_held_server_is_never_blocked_by_an_older_cancel_on_it():
    rows = [{"id": 1, "threshold": 9.0}, {"id": 2, "threshold": 12.0}]
    view = replace(with_spec(make_view(rows, orders=(held(1, 10.0),)), rebuy_block=3600.0),
                   left_at={1: NOW - 600})
    assert bids(outbid().decide(view)) == {1: 10.0}


def test_an_order_counts_as_held_from_the_moment_it_is_sent():
    rows = [{"id": 1, "threshold": 12.0}, {"id": 2, "threshold": 11.5}]
    sent = OwnOrder(1, 12.5, 1, "pending", NOW - 5)  # no id yet, not seen on the market
    view = make_view(rows, orders=(sent,))
    assert bids(Outbid(tick=0.5, switch_margin=0.1).decide(view)) == {1: 12.5}


def test_a_server_we_had_to_leave_is_come_back_to_without_the_margin():
    """Server 1 went offline under our order and we moved to 2; once back it is 5 % cheaper:
    too little to leave a held server for a new one (the switch margin), enough to return."""
    rows = [{"id": 1, "threshold": 9.5}, {"id": 2, "threshold": 10.0}]
    view = make_view(rows, orders=(held(2, 10.5),))
    strategy = Outbid(tick=0.5, switch_margin=0.1)
    assert bids(strategy.decide(view)) == {2: 10.5}
    back = replace(view, left_unusable={1: NOW - 7200})
    assert bids(strategy.decide(back)) == {1: 10.0}
    # a creation fee still has to pay back within the horizon
    assert bids(strategy.decide(with_spec(back, creation_fee=0.5))) == {2: 10.5}
    # while we hold it, it is not counted twice (held, and left before)
    assert bids(strategy.decide(replace(back, orders=(held(1, 10.0),)))) == {1: 10.0}


def test_coming_back_is_the_strategy_s_choice():
    """``fixed`` keeps what it holds (a held discount of 1) and asks nothing of a return: the
    server it had to leave is one more candidate."""
    from strategies.fixed import Fixed
    rows = [{"id": 1, "threshold": 9.5}, {"id": 2, "threshold": 10.0}]
    view = replace(make_view(rows, orders=(held(2, 12.0),)), left_unusable={1: NOW - 7200})
    assert bids(Fixed(price_per_gpu_day=12.0).decide(view)) == {2: 12.0}

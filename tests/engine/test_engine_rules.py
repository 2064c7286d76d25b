import math
from dataclasses import replace

import pytest

from bidder.config import CLORE, BudgetConfig, MarketsConfig
from bidder.rules import (
    Cancel,
    ChangePrice,
    Create,
    Deferred,
    StepKnowledge,
    TargetDecision,
    committed_per_day,
    lowest_allowed,
    next_lower_at,
    plan,
)
from bidder.view import build_target_view
from strategies.base import DesiredBid, OwnOrder

from engine_frames import NOW, Server, make_frame, make_target

NO_FEES = MarketsConfig.model_validate({"spot": {"fee_fraction": 0.0}})
NO_BUDGET = BudgetConfig()
OLD = NOW - 3600.0


def frame(n=5, **kw):
    return make_frame([Server(i) for i in range(1, n + 1)], **kw)


def order(server_id, price, *, state="winning", created_at=OLD, **kw):
    return OwnOrder(server_id, price, 1, state, created_at, order_id=kw.pop("order_id", 100 + server_id),
                    **kw)


def decision(orders=(), desired=(), *, target=None, market_frame=None, markets=NO_FEES):
    target = target or make_target()
    view = build_target_view(market_frame or frame(), target, list(orders), now=NOW, markets=markets)
    bids = None if desired is None else [DesiredBid(s, p) for s, p in desired]
    return TargetDecision(view, bids)


def run(*decisions, markets=NO_FEES, budget=NO_BUDGET, now=NOW):
    return plan(list(decisions), markets, budget, now)


# --- prices: raise, lower, floor, cap ------------------------------------------------------------


def test_raise_goes_through_at_once_even_right_after_creation():
    p = run(decision([order(1, 12.0, created_at=NOW - 5)], [(1, 16.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 12.0, 16.0),)
    assert p.deferred == ()


def test_raise_stops_at_the_cap_and_says_so():
    p = run(decision([order(1, 12.0)], [(1, 45.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 12.0, 30.0),)
    assert p.deferred == (Deferred("t", 1, 45.0, "cap"),)


def test_same_price_is_no_action():
    assert run(decision([order(1, 12.0)], [(1, 12.0 + 1e-12)])).actions == ()


def test_lowering_never_goes_below_the_floor():
    p = run(decision([order(1, 18.0)], [(1, 4.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 18.0, 10.0),)


def test_an_order_below_a_risen_floor_is_raised_to_it():
    p = run(decision([order(1, 8.0)], [(1, 8.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 8.0, 10.0),)


def test_floor_above_cap_defers_the_create_and_leaves_orders_alone():
    dear = make_frame([Server(1, floors={CLORE: 50.0}), Server(2, floors={CLORE: 50.0})])
    p = run(decision([order(2, 28.0)], [(1, 25.0), (2, 29.0)], market_frame=dear))
    assert p.actions == ()
    assert set(p.deferred) == {Deferred("t", 1, 25.0, "floor_above_cap"),
                               Deferred("t", 2, 29.0, "floor_above_cap")}


# --- lowering: cooldown and step -----------------------------------------------------------------


def test_lowering_waits_600_s_after_creation():
    created = NOW - 100
    p = run(decision([order(1, 20.0, created_at=created)], [(1, 15.0)]))
    assert p.actions == ()
    assert p.deferred == (Deferred("t", 1, 15.0, "cooldown", created + 600),)
    later = run(decision([order(1, 20.0, created_at=created)], [(1, 15.0)]), now=created + 600)
    assert later.actions == (ChangePrice("t", 101, 1, 20.0, 15.0),)


def test_creation_does_not_count_when_configured_so():
    markets = MarketsConfig.model_validate({"spot": {"cooldown_from_creation": False,
                                                     "fee_fraction": 0.0}})
    p = run(decision([order(1, 20.0, created_at=NOW - 5)], [(1, 15.0)], markets=markets),
            markets=markets)
    assert p.actions == (ChangePrice("t", 101, 1, 20.0, 15.0),)


def test_lowering_waits_600_s_after_the_last_lowering_and_for_what_the_exchange_said():
    recent = order(1, 20.0, last_lowered_at=NOW - 599)
    assert run(decision([recent], [(1, 15.0)])).deferred == (
        Deferred("t", 1, 15.0, "cooldown", NOW + 1),)
    told = order(1, 20.0, last_lowered_at=NOW - 900, next_lower_at=NOW + 42)
    assert run(decision([told], [(1, 15.0)])).deferred == (
        Deferred("t", 1, 15.0, "cooldown", NOW + 42),)


def test_unknown_step_with_a_partial_initial_fraction_lowers_part_way():
    markets = MarketsConfig.model_validate({"spot": {"initial_step_fraction": 0.1,
                                                     "fee_fraction": 0.0}})
    p = run(decision([order(1, 20.0)], [(1, 12.0)], markets=markets), markets=markets)
    assert p.actions == (ChangePrice("t", 101, 1, 20.0, 18.0),)
    assert p.deferred == (Deferred("t", 1, 12.0, "step", NOW + 600),)


def test_unknown_step_probes_with_the_wanted_price_by_default():
    p = run(decision([order(1, 20.0)], [(1, 12.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 20.0, 12.0),)


def test_a_learned_step_limits_the_lowering():
    p = run(decision([order(1, 20.0, lowest_allowed=18.5)], [(1, 12.0)]))
    assert p.actions == (ChangePrice("t", 101, 1, 20.0, 18.5),)
    assert p.deferred == (Deferred("t", 1, 12.0, "step", NOW + 600),)
    stuck = run(decision([order(1, 20.0, lowest_allowed=20.0)], [(1, 12.0)]))
    assert stuck.actions == () and stuck.deferred == (Deferred("t", 1, 12.0, "step"),)


def test_lowest_allowed_takes_the_safer_of_amount_and_percentage():
    told = StepKnowledge(price=20.0, max_step=18.0)          # 2 below, i.e. 10 % below
    assert lowest_allowed(20.0, told, 1.0) == pytest.approx(18.0)
    assert lowest_allowed(10.0, told, 1.0) == pytest.approx(9.0)    # 10 %: 9 > 10 - 2 = 8
    assert lowest_allowed(40.0, told, 1.0) == pytest.approx(38.0)   # amount: 38 > 40 x 0.9 = 36
    assert lowest_allowed(20.0, StepKnowledge(20.0, 25.0), 1.0) == 20.0  # no lowering at all
    assert lowest_allowed(20.0, None, 0.25) == 15.0
    assert lowest_allowed(20.0, None, 1.0) == 0.0


def test_next_lower_at():
    spot = MarketsConfig().spot
    assert next_lower_at(1000.0, None, None, spot) == 1600.0
    assert next_lower_at(1000.0, 5000.0, None, spot) == 5600.0
    assert next_lower_at(1000.0, 5000.0, 9000.0, spot) == 9000.0
    free = spot.model_copy(update={"cooldown_from_creation": False})
    assert next_lower_at(1000.0, None, None, free) == 0.0


# --- orders, creates, cancels --------------------------------------------------------------------


def test_create_is_clamped_to_floor_and_cap():
    p = run(decision([], [(1, 5.0), (2, 45.0)]))
    assert p.actions == (Create("t", 1, 10.0), Create("t", 2, 30.0))
    assert p.deferred == ()


def test_no_decision_means_no_action_and_unwanted_orders_are_cancelled():
    orders = [order(1, 12.0), order(2, 14.0)]
    assert run(decision(orders, None)) == run()
    p = run(decision(orders, [(1, 12.0)]))
    assert p.actions == (Cancel("t", 102, 2, "not_wanted"),)


def test_pending_and_unknown_orders_are_never_touched():
    orders = [order(1, 12.0, state="pending", order_id=None), order(2, 14.0, state="unknown"),
              order(3, 16.0, state="pending")]
    p = run(decision(orders, [(1, 20.0), (3, 16.0)]))
    assert p.actions == ()
    assert p.deferred == (Deferred("t", 1, 20.0, "in_flight"), Deferred("t", 2, None, "in_flight"))


def test_never_two_orders_on_one_server_across_targets():
    a = decision([order(1, 12.0, state="pending")], [(1, 12.0)], target=make_target(name="a"))
    b = decision([], [(1, 20.0), (2, 20.0)], target=make_target(name="b"))
    c = decision([], [(2, 25.0)], target=make_target(name="c"))
    p = run(a, b, c)
    assert p.actions == (Create("b", 2, 20.0),)
    assert p.deferred == (Deferred("b", 1, 20.0, "server_taken"), Deferred("c", 2, 25.0, "server_taken"))


def test_a_second_order_on_one_server_is_cancelled():
    p = run(decision([order(1, 12.0), order(1, 13.0, order_id=7)], [(1, 12.0)]))
    assert p.actions == (Cancel("t", 7, 1, "duplicate"),)


def test_creates_only_on_eligible_servers():
    market = make_frame([Server(1), Server(2, online=False)])
    p = run(decision([], [(2, 20.0), (3, 20.0)], market_frame=market))
    assert p.actions == ()
    assert p.deferred == (Deferred("t", 2, 20.0, "not_eligible"), Deferred("t", 3, 20.0, "not_eligible"))


def test_an_order_on_a_server_gone_from_the_market_can_still_be_repriced_or_cancelled():
    gone = order(9, 12.0)
    assert run(decision([gone], [(9, 14.0)])).actions == (ChangePrice("t", 109, 9, 12.0, 14.0),)
    assert run(decision([gone], [])).actions == (Cancel("t", 109, 9, "unusable"),)


def test_a_cancel_says_whether_the_server_could_still_be_held():
    """A strategy may come back to a server it had to leave (``left_unusable``), not to one it
    left by choice: the cancel's reason tells them apart."""
    market = make_frame([Server(1), Server(2, online=False)])
    p = run(decision([order(1, 12.0), order(2, 12.0)], [], market_frame=market))
    assert p.actions == (Cancel("t", 101, 1, "not_wanted"), Cancel("t", 102, 2, "unusable"))


def test_unknown_cap_rate_holds_everything_still():
    usd_cap = make_target(max_price_per_gpu_day=1.5, cap_currency="USD")
    d = decision([order(1, 12.0)], [], target=usd_cap, market_frame=frame(clore_usd=math.nan, rates={}))
    p = run(d)
    assert p.actions == ()
    d = decision([order(1, 12.0)], [(1, 15.0)], target=usd_cap,
                 market_frame=frame(clore_usd=math.nan, rates={}))
    assert run(d).deferred == (Deferred("t", 1, 15.0, "rate_unknown"),)


def test_actions_come_cancels_first_then_lowerings_raises_creates():
    d = decision([order(1, 20.0), order(2, 12.0), order(3, 12.0)], [(4, 11.0), (2, 14.0), (1, 15.0)])
    actions = run(d).actions
    assert [(type(a).__name__, a.server_id) for a in actions] == [
        ("Cancel", 3), ("ChangePrice", 1), ("ChangePrice", 2), ("Create", 4)]
    assert [actions[1].is_raise, actions[2].is_raise] == [False, True]


# --- budget ---------------------------------------------------------------------------------------


def clore_budget(amount):
    return BudgetConfig(max_per_day=amount, currency=CLORE)


def test_budget_frees_room_first_then_raises_then_creates():
    d = decision([order(1, 20.0), order(2, 15.0)], [(1, 25.0), (3, 12.0), (4, 14.0)])
    p = run(d, budget=clore_budget(50.0))   # committed 35: room 15, +15 cancel, -5 raise, -12 create
    assert p.actions == (Cancel("t", 102, 2, "not_wanted"), ChangePrice("t", 101, 1, 20.0, 25.0),
                         Create("t", 3, 12.0))
    assert p.deferred == (Deferred("t", 4, 14.0, "budget"),)


def test_lowering_frees_room_for_a_create():
    d = decision([order(1, 20.0)], [(1, 15.0), (2, 10.0)])
    assert Create("t", 2, 10.0) in run(d, budget=clore_budget(25.0)).actions
    assert Create("t", 2, 10.0) not in run(d, budget=clore_budget(24.0)).actions


def test_a_raise_is_trimmed_to_the_budget():
    p = run(decision([order(1, 20.0), order(2, 10.0)], [(1, 25.0), (2, 12.0)]), budget=clore_budget(32.0))
    assert p.actions == (ChangePrice("t", 101, 1, 20.0, 22.0),)
    assert p.deferred == (Deferred("t", 1, 25.0, "budget"), Deferred("t", 2, 12.0, "budget"))


def test_budget_counts_fees_and_converts_to_usd():
    markets = MarketsConfig()  # spot fee 2.5 %
    d = decision([order(1, 20.0)], [(1, 20.0), (2, 20.0)], markets=markets)
    # each order: 20 CLORE x 1.025 x 0.05 $ = 1.025 $/day
    assert committed_per_day([d.view], markets, "USD") == pytest.approx(1.025)
    assert run(d, markets=markets, budget=BudgetConfig(max_per_day=2.05)).actions == (Create("t", 2, 20.0),)
    assert run(d, markets=markets, budget=BudgetConfig(max_per_day=2.04)).deferred == (
        Deferred("t", 2, 20.0, "budget"),)


def test_unknown_usd_rate_refuses_increases_but_not_cancels_or_lowerings():
    blind = frame(clore_usd=math.nan, rates={})
    d = decision([order(1, 20.0), order(2, 20.0), order(3, 20.0)], [(1, 25.0), (2, 15.0), (4, 12.0)],
                 market_frame=blind)
    p = run(d, budget=BudgetConfig(max_per_day=1000.0))
    assert p.actions == (Cancel("t", 103, 3, "not_wanted"), ChangePrice("t", 102, 2, 20.0, 15.0))
    assert p.deferred == (Deferred("t", 1, 25.0, "rate_unknown"), Deferred("t", 4, 12.0, "rate_unknown"))


def test_budget_in_an_order_currency_converts_other_currencies_through_usd():
    rates = {CLORE: 0.05, "bitcoin": 60_000.0}
    mixed = make_frame([Server(1), Server(2, floors={"bitcoin": 1e-6})], rates=rates)
    clore = decision([order(1, 20.0)], [], target=make_target(name="c"), market_frame=mixed)
    btc = decision([order(2, 1e-5)], [], market_frame=mixed,
                   target=make_target(name="b", currency="bitcoin", max_price_per_gpu_day=1e-4))
    # 1e-5 BTC = 0.6 $ = 12 CLORE
    assert committed_per_day([clore.view, btc.view], NO_FEES, CLORE) == pytest.approx(32.0)
    # without a CLORE target in sight, the CLORE rate is unknown: no guess
    assert math.isnan(committed_per_day([btc.view], NO_FEES, CLORE))


# --- a spot target's first watch-list round ------------------------------------------------------


def test_a_target_still_watching_creates_nothing_and_keeps_what_it_holds():
    target = make_target()
    view = build_target_view(frame(), target, [order(1, 12.0), order(2, 14.0)], now=NOW,
                             markets=NO_FEES, watching=True)
    # the strategy wants to leave 2 for 3 and 4: 3 and 4 wait, 2 stays at its price, 1 is lowered
    p = run(TargetDecision(view, [DesiredBid(1, 11.0), DesiredBid(3, 11.5),
                                  DesiredBid(4, 11.6)]))
    assert p.actions == (ChangePrice("t", 101, 1, 12.0, 11.0),)
    assert p.deferred == (Deferred("t", 3, 11.5, "watching"), Deferred("t", 4, 11.6, "watching"))
    done = run(TargetDecision(replace(view, watching=False),
                              [DesiredBid(1, 11.0), DesiredBid(3, 11.5)]))
    assert Create("t", 3, 11.5) in done.actions and Cancel("t", 102, 2, "not_wanted") in done.actions

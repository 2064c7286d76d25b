"""The engine on hand-built markets with known answers: payments, fees, lowering rules, metrics."""

import math

import numpy as np
import pytest

from bidder.backtest.exchange import ExchangeRules, StartingOrder
from bidder.backtest.grid import run_backtest
from bidder.backtest.reactive import ReactiveSettings
from bidder.backtest.runner import AS_CONFIGURED, RunSettings, Variant, run_variant, steps
from bidder.rules import ChangePrice, Create

from bt_helpers import T0, config, history

DAY = 86_400.0
NONE = np.nan


def hold(price, **kw):
    return Variant("hold", "bt_helpers:Hold", {"price": price, **kw})


def one(run):
    return run.targets["t"]


NAMED_STEP = ExchangeRules(gigaspot_refusals="max_step", call_latency=0.0)
"""The emulated exchange naming the step of a refused lowering (spot's way; these tests' market is
GigaSPOT, whose API refuses without a reason: ``test_a_gigaspot_refusal_...``)."""
DECIDE_FIRST = RunSettings(NAMED_STEP, fills="decision")
"""The accounting tests here let a decision take effect on its own tick, so that their sums stay
simple; ``test_fill_resolution.py`` covers the default, which fills a decision's tick first."""


def metrics(h, cfg, variant, mode="replay", settings=DECIDE_FIRST, **kw):
    result = run_backtest(h, cfg, [variant], settings, modes=[mode], targets=cfg.targets, **kw)
    return result.metrics[0]["targets"][0]


def test_pay_your_bid_with_fees_and_a_creation_fee_past_ten_minutes():
    h = history(np.full((21, 1), NONE))  # 20 minutes, nobody else bids
    cfg = config(fee=0.025, creation_fee=0.5)
    m = metrics(h, cfg, hold(5.0))
    assert m["price_cost"] == pytest.approx(5.0 * 1200 / DAY)
    assert m["fee_cost"] == pytest.approx(5.0 * 1200 / DAY * 0.025)
    assert m["creation_fees"] == 0.5
    assert m["cost"] == pytest.approx(5.0 * 1200 / DAY * 1.025 + 0.5)
    short = metrics(history(np.full((10, 1), NONE)), cfg, hold(5.0))  # 9 minutes: no fee
    assert short["creation_fees"] == 0.0


def test_second_price_pays_the_rival_price_not_the_bid():
    h = history(np.full((11, 1), 3.0), floor=1.0)
    settings = RunSettings(ExchangeRules(payment="second_price"), fills="decision")
    m = metrics(h, config(), hold(5.0), settings=settings)
    assert m["price_cost"] == pytest.approx(3.0 * 600 / DAY)
    assert m["overpay_mean"] == pytest.approx(0.0)
    paid_bid = metrics(h, config(), hold(5.0))
    assert paid_bid["price_cost"] == pytest.approx(5.0 * 600 / DAY)
    assert paid_bid["overpay_mean"] == pytest.approx(2.0)


def test_lowering_waits_600_s_from_creation_then_learns_the_step_and_retries():
    h = history(np.full((22, 1), NONE), floor=1.0)
    run = run_variant(h, config(), hold(10.0, after=T0 + 60, then=5.0), DECIDE_FIRST, "replay",
                      keep_trace=True)
    c = one(run).counters
    lowered = [(t - T0, a) for t, p in run.trace for a in p.actions if isinstance(a, ChangePrice)]
    # creation at 0 counts as a lowering: the first lowering goes at 600 s; the exchange's real
    # step (10 %) refuses 5.0 with max_step 9.0 and the executor retries at 9.0; after another
    # 600 s the learned step allows 8.1
    assert [(t, a.price) for t, a in lowered] == [(600.0, 5.0), (1200.0, pytest.approx(8.1))]
    assert c.step_refusals == 1 and c.cooldown_refusals == 0
    assert c.lowerings == 2
    assert c.api_calls == 1 + 2 + 1  # create, refused lowering + retry, second lowering
    assert one(run).paid_per_day[-2] == pytest.approx(8.1)


def test_a_cooldown_the_bot_does_not_know_is_refused_and_counted():
    h = history(np.full((12, 1), NONE), floor=1.0)
    settings = RunSettings(ExchangeRules(cooldown=900.0))
    run = run_variant(h, config(), hold(10.0, after=T0 + 60, then=9.5), settings, "replay")
    c = one(run).counters
    assert c.cooldown_refusals >= 1 and c.lowerings == 0


def test_a_cooldown_refusal_is_waited_out_not_sent_again_at_every_decision():
    h = history(np.full((20, 1), NONE), floor=1.0)
    settings = RunSettings(ExchangeRules(cooldown=900.0, gigaspot_refusals="max_step",
                                         call_latency=0.0), fills="decision")
    run = run_variant(h, config(), hold(10.0, after=T0 + 60, then=9.5), settings, "replay",
                      keep_trace=True)
    c = one(run).counters
    lowered = [t - T0 for t, p in run.trace for a in p.actions if isinstance(a, ChangePrice)]
    # the bot believes 600 s; the exchange refuses at 600 s and tells it to wait until 900 s
    assert lowered == [600.0, 900.0]
    assert c.cooldown_refusals == 1 and c.lowerings == 1
    assert c.api_calls == 1 + 2


def test_a_rival_above_us_preempts_and_the_gap_is_measured():
    rival = np.full((11, 1), NONE)
    rival[4:7, 0] = 8.0  # a richer rival holds the server from minute 4 to 6
    m = metrics(history(rival), config(), hold(5.0))
    assert m["preemptions"] == 1
    assert m["time_to_acquire_min"] == 0.0
    assert m["gaps"] == 1 and m["gap_min"] == pytest.approx(3.0)
    assert m["availability"] == pytest.approx(7 / 10)
    assert m["preemptions_per_gpu_day"] == pytest.approx(1 / (7 * 60 / DAY))


def test_time_to_acquire_waits_for_the_market():
    rival = np.full((11, 1), NONE)
    rival[:3, 0] = 8.0
    m = metrics(history(rival), config(), hold(5.0))
    assert m["time_to_acquire_min"] == 3.0 and m["gaps"] == 0


def test_an_incumbent_rival_at_our_price_keeps_the_server_a_newcomer_does_not():
    incumbent = np.full((6, 1), 5.0)
    assert metrics(history(incumbent), config(), hold(5.0))["availability"] == 0.0
    newcomer = np.full((6, 1), NONE)
    newcomer[2:, 0] = 5.0  # arrives after our order: ours is the earlier bid
    assert metrics(history(newcomer), config(), hold(5.0))["availability"] == 1.0


def test_outbid_follows_the_rival_and_regret_is_small():
    rival = np.full((61, 2), NONE)
    rival[:, 0] = np.linspace(3.0, 6.0, 61)
    rival[:, 1] = 9.0
    m = metrics(history(rival), config(cap=20.0), Variant("outbid", "outbid", {"tick": 0.01}))
    assert m["availability"] == 1.0
    assert 0.0 <= m["regret"] < 0.05 * m["cost"]
    assert m["raises"] > 0


def test_reactive_rivals_answer_our_bids_and_stop_at_their_cap():
    h = history(np.full((121, 1), 5.0), floor=1.0)
    cfg = config(cap=50.0)
    outbid = Variant("outbid", "outbid", {"tick": 0.05})
    replay = run_variant(h, cfg, outbid, RunSettings(), "replay")
    settings = RunSettings(reactive=ReactiveSettings(seed=3))
    reactive = run_variant(h, cfg, outbid, settings, "reactive")
    again = run_variant(h, cfg, outbid, settings, "reactive")
    assert reactive.reactive_raises > 0
    assert one(reactive).price_cost > one(replay).price_cost
    assert one(reactive).preemptions > 0
    assert one(again).price_cost == one(reactive).price_cost  # deterministic for a seed
    # the agent never goes beyond its cap: 5.0 x at most 1.5, plus one answer's step
    assert one(reactive).paid_per_day.max() <= 5.0 * 1.5 * 1.02 + 0.05 + 1e-9


def test_reactive_rivals_answer_in_bitcoin_too():
    """A day's spot price in bitcoin is about 1e-5: rounded up to CLORE's 4 decimals an answer
    would be above any rival's cap, and reactive mode would silently be replay."""
    from bidder.config import parse_config

    h = history(np.full((121, 1), 2e-5), floor=1e-6, market="spot", currency="bitcoin")
    cfg = parse_config({"targets": [{"name": "t", "market": "spot", "count": 1,
                                     "currency": "bitcoin", "max_price_per_gpu_day": 1e-4}]})
    outbid = Variant("outbid", "outbid", {"tick": 1e-7})
    replay = run_variant(h, cfg, outbid, RunSettings(), "replay")
    reactive = run_variant(h, cfg, outbid, RunSettings(reactive=ReactiveSettings(seed=3)),
                           "reactive")
    assert reactive.reactive_raises > 0
    assert one(reactive).price_cost > one(replay).price_cost > 0
    assert one(reactive).paid_per_day.max() <= 2e-5 * 1.5 * 1.02 + 1e-7 + 1e-12


def test_a_live_session_replays_from_its_orders_at_its_decision_times():
    h = history(np.full((11, 2), NONE), floor=1.0)
    start = StartingOrder("t", server_id=2, price=7.0, created_at=T0 - 3600, order_id=555)
    times = [T0 + 90.0, T0 + 330.0]
    run = run_variant(h, config(), hold(4.0, server=2), RunSettings(), "replay",
                      decision_times=times, starting_orders=[start], keep_trace=True)
    assert [t for t, _ in run.trace] == times
    assert len(run.step_time) == 11 + 2
    first = run.trace[0][1].actions
    assert first == (ChangePrice("t", 555, 2, 7.0, 4.0),)
    # held from the first step, at 7.0 until the lowering at 90 s
    assert one(run).paid_per_day[0] == 7.0 and one(run).held_units.min() == 1
    assert not any(isinstance(a, Create) for _, p in run.trace for a in p.actions)


def test_a_starting_order_is_not_charged_the_creation_fee_it_paid_before_the_run():
    h = history(np.full((21, 2), NONE), floor=1.0)
    start = StartingOrder("t", server_id=1, price=5.0, created_at=T0 - 3600, order_id=555)
    cfg = config(creation_fee=0.5)
    run = run_variant(h, cfg, hold(5.0), DECIDE_FIRST, "replay", starting_orders=[start],
                      keep_trace=True)
    assert not any(p.actions for _, p in run.trace)  # kept as it stood
    assert one(run).counters.creation_fees == 0.0
    assert one(run).counters.creation_fee_orders == 0
    moved = run_variant(h, cfg, hold(5.0, server=2), DECIDE_FIRST, "replay",
                        starting_orders=[start])
    # the new order on server 2 lived 20 minutes: its fee is the run's; the old one's is not
    assert one(moved).counters.creation_fees == 0.5


def test_decisions_follow_decide_interval_when_snapshots_are_denser():
    h = history(np.full((10, 1), NONE), step=20.0)
    run = run_variant(h, config(decide_interval=60.0), hold(5.0), RunSettings(), "replay",
                      keep_trace=True)
    assert [t - T0 for t, _ in run.trace] == [0.0, 60.0, 120.0, 180.0]


def test_unit_servers_counts_servers_not_gpus():
    h = history(np.full((5, 2), NONE), gpus=[4, 2])
    cfg = config(count=1)
    cfg.targets[0].unit = "servers"
    m = metrics(h, cfg, hold(5.0, server=1))
    assert m["availability"] == 1.0 and m["gpu_hours"] == pytest.approx(4 * 4 * 60 / 3600)
    assert math.isclose(m["cost_per_gpu_hour"], m["cost"] / m["gpu_hours"])


def test_a_replayed_cycle_sees_the_data_it_saw_and_two_cycles_may_share_a_time():
    h = history(np.full((6, 1), NONE))  # ticks every 60 s from T0
    times = [T0 + 120.0, T0 + 120.0, T0 + 200.0]
    seen = [T0 + 60.0, T0 + 120.0, T0 + 180.0]
    step_time, step_tick, decide = steps(h, 60.0, times, seen, end=T0 + 400.0)
    assert (step_time - T0).tolist() == [0.0, 60.0, 120.0, 120.0, 180.0, 200.0, 240.0, 300.0,
                                         400.0]
    assert step_tick.tolist() == [0, 1, 1, 2, 3, 3, 4, 5, 5]  # the first 120 s cycle saw tick 1
    assert decide.tolist() == [False, False, True, True, False, True, False, False, False]


def test_a_step_before_a_cycle_that_saw_older_data_never_runs_ahead_of_it():
    h = history(np.full((4, 1), NONE))
    _, step_tick, _ = steps(h, 60.0, [T0 + 130.0], [T0 + 30.0])
    assert step_tick.tolist() == [0, 0, 0, 0, 3]  # ticks 60 and 120 wait for the cycle at 130


@pytest.mark.parametrize("times, seen, message", [
    ([T0 + 120.0, T0 + 60.0], None, "must not go back"),
    ([T0 + 60.0], [T0 - 1.0], "before the first recorded tick"),
    ([T0 + 60.0], [T0, T0], "2 seen_at times for 1 decision times"),
])
def test_bad_decision_times_are_refused(times, seen, message):
    h = history(np.full((4, 1), NONE))
    with pytest.raises(ValueError, match=message):
        steps(h, 60.0, times, seen)


def test_each_target_may_run_its_configured_strategy():
    cfg = config()
    cfg.targets[0].strategy, cfg.targets[0].strategy_params = "bt_helpers:Hold", {"price": 6.0}
    run = run_variant(history(np.full((3, 1), NONE), floor=1.0), cfg, AS_CONFIGURED,
                      RunSettings(), "replay", keep_trace=True)
    assert run.trace[0][1].actions[0].price == 6.0


def _bounced(rebuy_block):
    """Server 1 is cheap, then a rival above the cap takes it for three minutes, then leaves."""
    rival = np.full((21, 2), NONE)
    rival[3:6, 0] = 50.0
    cfg = config(cap=20.0)
    cfg.bot.rebuy_block = rebuy_block
    h = history(rival, floor=np.array([1.0, 5.0]))
    return metrics(h, cfg, Variant("outbid", "outbid", {"tick": 0.01}))


def test_a_server_left_is_not_bought_back_within_the_rebuy_block():
    free = _bounced(0.0)
    assert free["rebuys_within_hour"] == 1 and free["orders_created"] == 3
    blocked = _bounced(3600.0)
    assert blocked["rebuys_within_hour"] == 0 and blocked["orders_created"] == 2
    assert blocked["availability"] == pytest.approx(free["availability"])


def test_surplus_counts_the_gpus_nobody_asked_for():
    h = history(np.full((11, 1), NONE), gpus=[4])
    m = metrics(h, config(count=1), hold(5.0))
    assert m["surplus_gpu_hours"] == pytest.approx(3 * 10 * 60 / 3600)
    assert m["gpu_hours"] == pytest.approx(4 * 10 * 60 / 3600)
    assert m["oracle_whole_servers_gpu_hours"] == pytest.approx(4 * 10 * 60 / 3600)


def test_a_call_latency_makes_lowerings_wait_for_the_decision_after_the_cooldown():
    """Live, a lowering's cooldown runs from when its call returned, a moment after the decision:
    on a 60-s interval the next lowering goes a decision after the cooldown (660 s), as
    ``--call-latency`` models; at the decisions' times (the default) 600 s."""
    h = history(np.full((40, 1), NONE), floor=1.0)

    def lowerings(latency: float) -> list[float]:
        settings = RunSettings(ExchangeRules(call_latency=latency, gigaspot_refusals="max_step"),
                               fills="decision")
        run = run_variant(h, config(), hold(10.0, after=T0 + 60, then=5.0), settings, "replay",
                          keep_trace=True)
        return [t - T0 for t, p in run.trace for a in p.actions if isinstance(a, ChangePrice)]

    assert lowerings(0.0)[:3] == [600.0, 1200.0, 1800.0]
    assert lowerings(1.0)[:3] == [660.0, 1320.0, 1980.0]


def test_a_gigaspot_refusal_names_no_step_and_the_bot_probes_half_of_it():
    """GigaSPOT's API refuses a lowering without a reason (``failed_to_update_ids``): the bot
    tries half the step at the next decision (``bidder.executor``), as the emulated exchange
    lets it, until a price within the real step (10 %: 9.0 from 10.0) goes through."""
    h = history(np.full((22, 1), NONE), floor=1.0)
    run = run_variant(h, config(), hold(10.0, after=T0 + 60, then=5.0),
                      RunSettings(ExchangeRules(call_latency=0.0), fills="decision"), "replay",
                      keep_trace=True)
    tried = [(t - T0, a.price) for t, p in run.trace for a in p.actions
             if isinstance(a, ChangePrice)]
    assert tried[:4] == [(600.0, 5.0), (660.0, 7.5), (720.0, 8.75), (780.0, 9.375)]
    c = one(run).counters
    assert c.step_refusals == 3 and c.lowerings >= 1
    assert one(run).paid_per_day[tried_index(run, 780.0) + 1] == pytest.approx(9.375)


def tried_index(run, seconds: float) -> int:
    return int(np.flatnonzero(np.isclose(run.step_time - T0, seconds))[0])


def _outage(first, last):
    """Server 1 (floor 5.0) is offline from tick ``first`` to ``last``; server 2 is 6 % dearer.
    Who holds what, as (minute, kind, server, reason) of the creates and cancels."""
    online = np.ones((300, 2), dtype=bool)
    online[first:last, 0] = False
    h = history(np.full((300, 2), NONE), floor=np.array([5.0, 5.3]), online=online)
    run = run_variant(h, config(cap=20.0), Variant("outbid", "outbid", {"tick": 0.01}),
                      RunSettings(), "replay", keep_trace=True)
    return [((t - T0) // 60, type(a).__name__, a.server_id, getattr(a, "reason", None))
            for t, p in run.trace for a in p.actions if not isinstance(a, ChangePrice)]


def test_a_server_held_until_an_outage_is_come_back_to_as_live():
    """The rule of ``bidder.orders.left_unusable``: held two hours, then offline ten minutes:
    back to it once the rebuy block is over, though it is cheaper by less than the switch
    margin. Held half an hour (a flicker, ``RETURN_HELD``): it stays on the stand-in."""
    assert _outage(120, 130) == [(0, "Create", 1, None), (120, "Cancel", 1, "unusable"),
                                 (120, "Create", 2, None), (181, "Cancel", 2, "not_wanted"),
                                 (181, "Create", 1, None)]
    assert _outage(30, 40) == [(0, "Create", 1, None), (30, "Cancel", 1, "unusable"),
                               (30, "Create", 2, None)]


def _created_after_a_refused_lowering(budget):
    """At 20 minutes the strategy lowers server 1 by half (refused: GigaSPOT's step is 10 %, and
    it says no reason) and buys server 2: the minute server 2 is created."""
    cfg = config(count=2)
    cfg.budget.max_per_day = budget
    h = history(np.full((31, 2), NONE), floor=1.0)
    run = run_variant(h, cfg, hold(10.0, after=T0 + 1200, then=5.0, add=2), RunSettings(),
                      "replay", keep_trace=True)
    created = [t for t, p in run.trace for a in p.actions if isinstance(a, Create)
               and a.server_id == 2]
    assert one(run).counters.step_refusals >= 1
    return (created[-1] - T0) / 60  # the last time the plan asked for it: when it went through


def test_under_a_budget_a_refused_lowering_holds_the_create_back_as_the_executor_does():
    """The executor sends no raise or create while a lowering it counted on did not go through
    (the budget counted on what it frees). The strategy's 5.0 is refused, then the probes at
    7.5 and 8.75, and 9.375 goes through (within the 10 % step): the create goes with it, three
    decisions later. Without a budget it goes at once."""
    assert _created_after_a_refused_lowering(None) == 20.0
    assert _created_after_a_refused_lowering(1000.0) == 23.0

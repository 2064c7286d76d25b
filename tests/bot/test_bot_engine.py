"""The decide/execute cycle: no decision on missing or stale market data, what each cycle records
for a replay, the heartbeat, the kill switch, and history for strategies that want it."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from bidder.backtest.replay_diff import load_run, replay_diff
from bidder.backtest.runner import RunSettings
from bidder.config import CLORE
from bidder.engine import recent_wins, stale_after
from bidder.rules import budget_left
from bot_helpers import KEY, START, assert_books_agree, assert_invariants, giga_target, make_config, \
    ours, spot_target
from storage.frames import empty_frame
from storage.models import ApiJournal, BotCycle, BotDecision, BotHalt, BotOrder, BotRun

SERVER = 1084


def cycles(database):
    with database.sessions() as session:
        return list(session.scalars(select(BotCycle).order_by(BotCycle.id)))


def settled_books_agree(market, database, bot) -> None:
    """The order-flow invariant: after a reconciliation, our orders at the exchange are the
    database's, one per server, and no rule of the exchange was broken."""
    bot.executor.reconcile()
    assert_books_agree(market, database)
    assert_invariants(market, database)


def test_no_decision_before_the_first_polls(rig, database, caplog):
    caplog.set_level(logging.INFO)
    r = rig(make_config(spot_target(), giga_target()))
    bot = r.start()
    result = bot.decide_job()
    assert result.skipped == ("waiting for the first gigaspot poll; "
                              "waiting for the first spot poll")
    assert r.market.stats[KEY].requests["create_order"] == 0
    bot.poll_gigaspot_job()
    assert bot.decide_job().skipped is None  # GigaSPOT is fresh: its target is decided
    assert {o.kind for o in ours(r.market)} == {"gigaspot"}
    bot.poll_marketplace_job()
    bot.poll_spot_job()
    assert bot.decide_job().skipped is None
    # spot waits for one full watch-list round: this one polled only some candidates
    assert {o.kind for o in ours(r.market)} == {"gigaspot"}
    bot.poll_spot_job()  # the rest of the candidates
    assert bot.decide_job().skipped is None
    assert {o.kind for o in ours(r.market)} == {"gigaspot", "spot"}
    assert "candidates polled once; it may now create orders" in caplog.text
    settled_books_agree(r.market, database, bot)


def test_a_replay_waits_for_the_watch_round_as_the_bot_did(rig, database):
    """The first cycles decide on a GigaSPOT snapshot taken before the first marketplace listing:
    the replay's spot target then sees no candidates yet. It must not take the watch-list round
    as done for that (it once did, for good, and bought spot servers at the next cycles while
    the bot still watched)."""
    r = rig(make_config(spot_target(), giga_target()))
    bot = r.start()
    bot.poll_gigaspot_job()
    r.clock.advance(30.0)
    bot.decide_job()  # GigaSPOT only: the spot target is not decided
    bot.poll_marketplace_job()
    for _ in range(3):
        r.clock.advance(30.0)
        bot.poll_spot_job()
        bot.poll_gigaspot_job()
        bot.decide_job()
    assert {o.kind for o in ours(r.market)} == {"gigaspot", "spot"}
    with database.sessions() as session:
        spot_decisions = [d for d in session.scalars(select(BotDecision)) if d.target == "s"]
        assert [x["reason"] for x in spot_decisions[0].deferred] == ["watching"]
        diff = replay_diff(session, load_run(session), RunSettings())
    assert diff.differences == [], diff.differences[:2]
    settled_books_agree(r.market, database, bot)


def test_stale_market_data_holds_everything_still(rig, database, caplog):
    config = make_config(spot_target())
    r = rig(config)
    bot = r.start()
    r.run(120)
    [held] = ours(r.market)
    r.market.set_online(SERVER, False)  # would make the bot move, if it saw it
    r.clock.advance(stale_after(config, "spot") + 1)
    skipped = bot.decide_job()
    assert skipped.skipped.startswith("spot data last polled ")
    bot.decide_job()
    assert held.open and r.market.stats[KEY].requests["cancel_orders"] == 0
    assert caplog.text.count("not deciding spot targets") == 1  # said once, not every cycle
    assert cycles(database)[-1].skipped.startswith("spot data last polled")
    with database.sessions() as session:
        run = session.get_one(BotRun, bot.run_id)
    assert run.heartbeat_at == r.clock.now()  # still alive, and says so
    bot.poll_spot_job()
    assert bot.decide_job().skipped is None
    assert not held.open  # fresh data again: it moves
    settled_books_agree(r.market, database, bot)


def test_each_cycle_records_what_a_replay_needs(rig, database):
    r = rig(make_config(spot_target(strategy_params={"tick": 0.5})))
    rival = r.market.place_rival(SERVER, 20.0)
    bot = r.start()
    r.run(90)
    r.market.cancel(rival.id)
    r.run(700)
    with database.sessions() as session:
        decided = session.scalars(select(BotDecision).order_by(BotDecision.cycle_id)).all()
        by_cycle = {c.id: c for c in session.scalars(select(BotCycle))}
        journal = session.scalars(select(ApiJournal).order_by(ApiJournal.id)).all()
    # until every candidate has been polled once the wish waits (the first watch-list round)
    k = next(k for k, d in enumerate(decided) if d.actions)
    assert k > 0 and all(d.actions == [] and [x["reason"] for x in d.deferred] == ["watching"]
                         for d in decided[:k])
    first = decided[k]
    assert (first.target, first.strategy, first.params) == ("s", "outbid", {"tick": 0.5})
    assert first.orders == [] and first.desired == [{"server_id": SERVER, "price": 20.5}]
    assert first.actions == [{"kind": "create", "target": "s", "server_id": SERVER,
                              "price": 20.5}]
    cycle = by_cycle[first.cycle_id]
    assert cycle.mode == "live" and cycle.spot_frame_time is not None
    assert cycle.gigaspot_frame_time is None
    [create] = [j for j in journal if j.endpoint == "create_order"]
    assert create.cycle_id == first.cycle_id
    # after the rival left: the wish is the floor, the cooldown defers it, then a lowering
    waiting = next(d for d in decided[k:] if d.deferred)
    [deferred] = waiting.deferred
    assert deferred["reason"] == "cooldown" and deferred["wanted_price"] == 11.1014
    assert waiting.orders[0]["state"] == "winning" and waiting.orders[0]["order_id"] is not None
    lowered = next(d for d in decided if d.actions and d.actions[0]["kind"] == "lower")
    assert lowered.actions[0]["price"] == 11.1014
    assert deferred["not_before"] == pytest.approx(lowered.orders[0]["next_lower_at"])
    settled_books_agree(r.market, database, bot)


def test_the_kill_switch_stops_the_bot_at_its_next_cycle(rig, database, caplog):
    r = rig(make_config(spot_target()))
    bot = r.start()
    r.run(60)
    with database.sessions.begin() as session:
        session.add(BotHalt(wall_at=r.clock.now(), reason="bidder cancel-all"))
    result = bot.decide_job()
    assert result.skipped == "halted by cancel-all" and bot.stop.is_set()
    assert "halted by bidder cancel-all" in caplog.text
    settled_books_agree(r.market, database, bot)  # halted, not cancelled: cancel-all does that


def test_percentile_strategies_get_recent_winning_prices_from_storage(rig, database):
    r = rig(make_config(spot_target(strategy="percentile",
                                    strategy_params={"history_window": 3600})))
    r.market.place_rival(1153, 40.0)  # 4 x GTX 1660 SUPER, floor 34.1861: wins at 40
    bot = r.start()
    r.run(60)
    with database.sessions() as session:
        wins = recent_wins(session, "spot", np.array([1153, 1084]), np.array([4, 1]),
                           r.clock.now() - 3600, r.clock.now())
        desired = session.scalars(select(BotDecision.desired).order_by(
            BotDecision.cycle_id.desc())).first()
    # the rival's 40 on 4 GPUs; not our own order on 1084, although it held the server
    assert set(wins.tolist()) == {10.0}
    # the median win per GPU-day on 1084 (one GPU) is below its floor: the floor it is
    assert desired == [{"server_id": 1084, "price": 11.1014}]
    settled_books_agree(r.market, database, bot)


def test_unmanaged_orders_count_against_the_budget():
    config = make_config(spot_target(), budget=150.0)
    frame = replace(empty_frame("spot", START), clore_usd=0.03)
    unmanaged = [BotOrder(market="spot", price=40.0, currency=CLORE),
                 BotOrder(market="gigaspot", price=20.0, currency="USD-Blockchain")]
    left = budget_left(config, unmanaged, {"spot": frame})
    assert left.max_per_day == pytest.approx(150.0 - 40.0 * 1.025 - 20.0 * 1.025 / 0.03)
    assert budget_left(config, [], {"spot": frame}) is config.budget

"""``bidder backtest --replay-diff`` on sessions recorded against the simulated market: the
backtester, replaying what the bot saw, decides exactly what the bot decided and charges within
1 % of what the exchange billed; a changed record shows up as a difference."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
from sqlalchemy import delete, select

import bidder.backtest.replay_diff as replay_diff_module
from bidder.api import CloreClient
from bidder.api.models import SpotOrderRequest
from bidder.backtest.replay_diff import ReplayDiffError, describe, load_run, replay_diff
from bidder.backtest.exchange import ExchangeRules
from bidder.backtest.runner import RunSettings
from bidder.cli import main
from bidder.clock import ManualClock
from bidder.orders import SPEND_AT_STOP, recently_cancelled
from bidder.sim import SimMarket, SimOptions
from bidder.warmup import warm_memories
from bidder.config import CLORE
from bot_helpers import (
    BASE_URL,
    KEY,
    START,
    assert_invariants,
    drive,
    giga_target,
    make_config,
    new_bot,
    ours,
    spot_target,
)
from storage.db import Database, open_database
from storage.models import (
    ApiCall,
    ApiJournal,
    BotCycle,
    BotDecision,
    BotOrder,
    BotOrderEvent,
    BotRun,
    ServerBlock,
)

HOURS = 3.0


def record_session(path: Path, *, hours: float = HOURS, mode: str = "live",
                   runs: int = 1, spot: bool = False, seed: int = 11,
                   budget: float | None = None, by_hand: bool = False) -> SimMarket:
    """A seeded GigaSPOT session: competitors outbid the bot, a machine is rented on demand
    under one of its orders, it cancels and moves. ``runs`` > 1: the bot is stopped and started
    again that many times (each run ``hours`` long), keeping its orders. ``budget``: the daily
    budget (CLORE); ``by_hand``: a spot order of ours placed by hand before the bot starts, 5 %
    above its server's floor (unmanaged: it counts against the budget)."""
    clock = ManualClock(START)
    market = SimMarket(SimOptions(seed=seed, spot_servers=24, gigaspot_machines=48), clock)
    if by_hand:
        server = market.server(min(market.world.servers))
        with CloreClient(KEY, clock=clock, base_url=BASE_URL, transport=market.transport(),
                         cdn_transport=market.transport()) as client:
            client.create_spot_order(SpotOrderRequest(
                currency=CLORE, image="by-hand", renting_server=server.id,
                spotprice=round(server.floors[CLORE] * 1.05, 2)))
        clock.advance(5.0)  # its own client's rate limit, not the bot's: a call later
    targets = [giga_target(count=4, max_price_per_gpu_day=60.0, min_reliability=0.8,
                           strategy_params={"tick": 0.5})]
    if spot:
        targets.append(spot_target(count=2, max_price_per_gpu_day=300.0, min_reliability=0.8,
                                   strategy_params={"tick": 1.0}))
    config = make_config(*targets, budget=budget,
                         bot={"decide_interval": 60.0},
                         poller={"gigaspot_interval": 20.0, "spot_interval": 60.0,
                                 "spot_polls_per_round": 6})
    with open_database(f"sqlite:///{path}", writer=True) as database:
        for _ in range(runs):
            bot = new_bot(config, database, clock, market.transport(), None, mode=mode)
            bot.start()
            drive(bot, clock, hours * 1800)
            # a machine rented on demand under one of its orders: it cancels and moves (the
            # seed's own rentals need not hit a server the bot holds)
            held = [o for o in market.orders_of(KEY) if o.open and o.kind == "gigaspot"]
            if held:
                market.set_rented(held[0].venue_id, True)
            drive(bot, clock, hours * 1800)
            bot.finish("stopped")
            # a restart takes time: the next run starts after this one's last events (at the
            # same instant, a replay could not tell whose they were)
            clock.advance(1.0)
        assert_invariants(market, database)  # the books agree, one bid a server, no rule broken
    return market


@pytest.fixture(scope="module")
def session_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimMarket]:
    path = tmp_path_factory.mktemp("replay") / "session.db"
    return path, record_session(path)


def diff_of(path: Path, run_id: int | None = None):
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        return replay_diff(session, load_run(session, run_id), RunSettings())


def test_a_sim_session_replays_with_no_decision_gap_and_under_one_percent_cost(session_db):
    path, market = session_db
    diff = diff_of(path)
    assert diff.cycles > 150
    assert diff.differences == []
    (cost,) = diff.costs
    ended = {o.id: o.spend for o in market.orders_of(KEY) if not o.open}
    assert ended  # the final spend of the orders it cancelled is the exchange's own
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        rows = session.execute(select(BotOrder.order_id, BotOrder.spend).where(
            BotOrder.order_id.in_(list(ended)))).all()
    recorded = {order_id: spend for order_id, spend in rows}
    assert recorded == ended
    billed = sum(o.spend for o in market.orders_of(KEY))  # billed a second past the last sync
    assert cost.bot == pytest.approx(billed, rel=1e-3)
    assert cost.bot > 1.0 and abs(cost.gap) < 0.01, cost


def test_both_markets_replay_with_no_decision_gap(tmp_path):
    """Each cycle saw spot polls newer than its GigaSPOT snapshot: the replay adds ticks at those
    moments, so it sees both as the cycle did. (Spot costs differ by more than GigaSPOT's: a spot
    rival is seen only when its server is polled; README, --replay-diff.)"""
    path = tmp_path / "both.db"
    record_session(path, hours=1.5, spot=True)
    # the spot target waited for its first watch-list round (6 polls a round)
    # before its first create, and the replay waited just as long: no decision differs
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        spot = session.scalars(select(BotDecision).where(BotDecision.target == "s")
                               .order_by(BotDecision.cycle_id)).all()
    first = next(k for k, d in enumerate(spot) if any(a["kind"] == "create" for a in d.actions))
    assert first >= 1 and all({x["reason"] for x in d.deferred} == {"watching"}
                              for d in spot[:first])
    diff = diff_of(path)
    assert diff.differences == []
    costs = {c.target: c for c in diff.costs}
    assert costs["s"].bot > 0 and costs["s"].comparable
    assert abs(costs["g"].gap) < 0.01, costs["g"]


def last_acting_cycle(session) -> BotCycle:
    return session.scalars(select(BotCycle).join(BotDecision).where(
        BotDecision.actions != []).order_by(BotCycle.id.desc())).first()


def test_cycles_after_the_last_sync_are_replayed_on_the_data_they_saw(session_db, tmp_path):
    """The run's end (for the bill) is its last ``my_orders`` sync; cycles after it saw newer
    market data, and the replay must see it too (it once replayed them on the data up to the
    end and found them changed)."""
    path, _ = session_db
    copy = tmp_path / "late.db"
    copy.write_bytes(path.read_bytes())
    with open_database(f"sqlite:///{copy}", writer=True) as db, db.sessions.begin() as session:
        acted = last_acting_cycle(session)
        seen = max(t for t in (acted.gigaspot_frame_time, acted.spot_frame_time) if t is not None)
        # no sync from just before the data it acted on: as if the last one came before it
        session.execute(delete(ApiCall).where(ApiCall.endpoint == "my_orders",
                                              ApiCall.started_at >= seen - 1.0))
    diff = diff_of(copy)
    assert diff.run.end < seen and diff.differences == []


def test_a_changed_decision_and_a_changed_bill_show_up(session_db, tmp_path):
    path, _ = session_db
    copy = tmp_path / "changed.db"
    copy.write_bytes(path.read_bytes())
    with open_database(f"sqlite:///{copy}", writer=True) as db, db.sessions.begin() as session:
        decision = session.scalars(select(BotDecision).join(BotCycle).where(
            BotDecision.actions != []).order_by(BotCycle.id.desc())).first()
        first = dict(decision.actions[0])
        if "price" in first:
            first["price"] *= 1.01
        else:
            first["server_id"] += 1
        decision.actions = [first, *decision.actions[1:]]
        changed_at = session.get(BotCycle, decision.cycle_id).at
        order = session.scalars(select(BotOrder)).first()
        order.spend *= 2
    diff = diff_of(copy)
    assert [d.at for d in diff.differences] == [changed_at]
    assert diff.differences[0].bot != diff.differences[0].replay
    assert diff.costs[0].gap < -0.1


def test_a_dry_run_session_replays_its_virtual_fills(tmp_path):
    path = tmp_path / "dry.db"
    market = record_session(path, hours=1.5, mode="dry-run")
    assert not market.orders_of(KEY)  # nothing was sent
    diff = diff_of(path)
    assert diff.run.mode == "dry-run" and diff.differences == []
    (cost,) = diff.costs
    assert cost.bot > 0 and abs(cost.gap) < 0.01, cost


def test_a_dry_run_lowering_beyond_the_exchange_s_step_replays_as_the_bot_did(tmp_path):
    """A dry run's virtual exchange takes a lowering the real one would refuse for its step
    (nothing is refused, so no step is learned): its replay does too, instead of the step the
    emulated exchange enforces (seed 8: one lowering from 21.75 to 17.99 at 840 s)."""
    path = tmp_path / "dry8.db"
    record_session(path, hours=1.0, mode="dry-run", spot=True, seed=8)
    diff = diff_of(path)
    assert diff.run.mode == "dry-run" and diff.differences == []
    assert all(abs(c.gap) < 0.01 for c in diff.costs), diff.costs


def test_a_restarted_bot_replays_from_the_orders_it_found(tmp_path):
    path = tmp_path / "restart.db"
    record_session(path, hours=1.0, runs=2)
    diff = diff_of(path)
    assert diff.run.run_id == 2 and len(diff.run.starting) >= 2
    assert diff.differences == []
    (cost,) = diff.costs
    assert not cost.comparable and math.isnan(cost.gap)  # its spend before the restart is unknown
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        first = load_run(session, 1)
        second_started = session.get(BotRun, 2).started_at
    assert first.end < second_started  # run 1 is billed up to its own last sync, not run 2's
    earlier = diff_of(path, 1)
    assert earlier.differences == []
    # its orders lived on into run 2: billed at their spend when run 1 stopped, not now
    (cost,) = earlier.costs
    assert cost.comparable and cost.why_not is None and abs(cost.gap) < 0.02, cost


def test_a_run_that_did_not_stop_cleanly_is_not_billed_with_the_next_run_s_spend(tmp_path):
    """Without the spend its orders had at its stop (a crash writes none), a run whose orders
    lived on into the next run cannot be billed: its cost is marked, not compared wrongly."""
    path = tmp_path / "crash.db"
    record_session(path, hours=1.0, runs=2)
    with open_database(f"sqlite:///{path}", writer=True) as db, db.sessions.begin() as session:
        assert session.execute(delete(BotOrderEvent).where(
            BotOrderEvent.kind == SPEND_AT_STOP)).rowcount > 0
    diff = diff_of(path, 1)
    (cost,) = diff.costs
    assert not cost.comparable and cost.why_not == "outlived" and math.isnan(cost.gap)
    text = describe(diff, str)
    assert "g left orders open into the next run without recording their spend" in text
    assert text.splitlines()[-1].split()[3] == "outlived"


def test_a_restarted_bot_warms_its_market_memory_and_its_replay_warms_it_alike(
        tmp_path, caplog, monkeypatch):
    """The engine's market memory takes in what was recorded before its run started (after a
    restart: the first run's market); the replay of that run warms it from the same ticks."""
    path = tmp_path / "restart.db"
    with caplog.at_level(logging.INFO, logger="bidder.engine"):
        record_session(path, hours=1.0, runs=2)
    said = [r.getMessage() for r in caplog.records if "market memory" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("market memory starts empty: nothing recorded in the 6 h")
    warmed = re.fullmatch(r"market memory warmed from (\d+) recorded tick\(s\) before the "
                          r"start \(g\)", said[1])
    assert warmed is not None and int(warmed[1]) > 60, said[1]  # the first run's snapshots

    asked = []

    def spy(session, config, targets, *, until):
        result = warm_memories(session, config, targets, until=until)
        asked.append((until, result))
        return result

    monkeypatch.setattr(replay_diff_module, "warm_memories", spy)
    diff = diff_of(path)
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        started = session.get(BotRun, 2).started_at
    ((until, replayed),) = asked
    assert until == started and replayed.ticks == int(warmed[1])
    assert set(replayed.memories) == {"g"}
    assert diff.run.started_at == started and diff.differences == []


def test_both_markets_warm_after_a_restart_and_replay_alike(tmp_path, caplog, monkeypatch):
    """A spot target's memory warms from the recorded polls, a GigaSPOT one's from the snapshots,
    each loaded on its own (spot offers are ranked in one currency); the replay agrees."""
    path = tmp_path / "both.db"
    with caplog.at_level(logging.INFO, logger="bidder.engine"):
        record_session(path, hours=1.0, runs=2, spot=True)
    said = [r.getMessage() for r in caplog.records if "market memory" in r.getMessage()]
    assert said[0].endswith("before the start (g, s)") and "starts empty" in said[0]
    assert said[1].startswith("market memory warmed from") and said[1].endswith("(g, s)")
    asked = []

    def spy(session, config, targets, *, until):
        asked.append(result := warm_memories(session, config, targets, until=until))
        return result

    monkeypatch.setattr(replay_diff_module, "warm_memories", spy)
    diff = diff_of(path)
    ((warmed),) = asked
    for name in ("g", "s"):  # each saw servers, up to the restart
        memory = warmed.memories[name]
        assert memory.servers > 0 and memory.observed_at < diff.run.started_at, name
    assert diff.differences == []


@pytest.mark.parametrize("seed", [1, 2])
def test_restarted_sessions_on_both_markets_replay_decision_for_decision(tmp_path, seed):
    """Seed 1: a spot server is rented on demand under the bot's order (its offer waits, none
    runs): the bot leaves it and keeps away, and so does the replay. Seed 2: after the restart
    the bot does not buy back a server the first run cancelled within its rebuy block, and the
    replay knows that cancel. Both runs replay with no difference, and run 1's bill (its
    orders live on into run 2) is compared at its stop."""
    path = tmp_path / f"seed{seed}.db"
    record_session(path, hours=0.5, runs=2, spot=True, seed=seed)
    for run_id in (1, 2):
        diff = diff_of(path, run_id)
        assert diff.differences == [], (run_id, diff.differences[:2])
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        reasons = {b.reason for b in session.scalars(select(ServerBlock))}
        assert load_run(session, 2).left_before["s"] or seed != 2
    assert ("idle: offers wait, none runs" in reasons) == (seed == 1)
    costs = {c.target: c for c in diff_of(path, 1).costs}
    assert costs["g"].comparable and abs(costs["g"].gap) < 0.05, costs["g"]


def test_the_replay_takes_each_call_when_the_bot_did(tmp_path):
    """The bot records a lowering when its call returns, a moment after the decision, and the
    next one waits for the cooldown from then: on a 60-s interval the decision 600 s later is a
    moment too early and it lowers a decision after. The replay takes the run's calls at their
    recorded times and lowers when the bot did; at the decisions' times it would lower a
    decision earlier (seed 8: at 1440 s instead of 1500 s)."""
    path = tmp_path / "latency.db"
    record_session(path, hours=1.0, spot=True, seed=8)
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        run = load_run(session, 1)
        lowered = {k: at for k, at in run.call_times.items() if k[1] == "lower"}
        assert all(0 <= at - k[3] < 60 for k, at in lowered.items())
        assert any(at > k[3] for k, at in lowered.items())  # a call that took a moment
        assert replay_diff(session, run, RunSettings()).differences == []
        run.call_times = {}
        # without them, the backtest's own model (a second's latency) lowers when the bot did;
        # calls at the decisions' times lower a decision early
        assert replay_diff(session, run, RunSettings()).differences == []
        early = replay_diff(session, run, RunSettings(ExchangeRules(call_latency=0.0))).differences
    assert early and early[0].replay and early[0].replay[0][1] == "lower" and not early[0].bot


def test_unmanaged_orders_take_their_cost_off_the_replay_s_budget_as_off_the_bot_s(tmp_path):
    """A spot order placed by hand (85.52 a day) and a budget of 112: the bot's GigaSPOT target
    gets what is left, and so does its replay; a replay that left the order out would buy more."""
    path = tmp_path / "budget.db"
    record_session(path, hours=1.0, budget=112.0, by_hand=True)
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        run = load_run(session, 1)
        assert [(u.market, u.price, u.closed_at) for u in run.unmanaged] == [
            ("spot", pytest.approx(85.52), None)]
        diff = replay_diff(session, run, RunSettings())
        assert diff.differences == []
        (cost,) = diff.costs
        assert cost.comparable and abs(cost.gap) < 0.02, cost
        run.unmanaged = []
        more = replay_diff(session, run, RunSettings()).differences
    assert more and any(kind == "create" for _, kind, _, _ in more[0].replay)


def test_a_run_starts_with_the_cancels_before_it_not_later_ones(database: Database):
    """A server cancelled before the run and again during it: the run's rebuy block at its start
    is the earlier cancel (the later one once hid it, and the replay bought the server back)."""
    def cancelled(server_id: int, closed_at: float) -> BotOrder:
        return BotOrder(target="g", market="gigaspot", server_id=server_id, order_id=server_id,
                        state="closed", price=5.0, currency="CLORE-Blockchain", gpus=1,
                        created_at=closed_at - 600, closed_at=closed_at,
                        close_reason="cancelled (not wanted)", adopted=False, dry_run=False,
                        lookups=0)

    with database.sessions.begin() as session:
        session.add_all([cancelled(7, START + 100), cancelled(7, START + 5000),
                         cancelled(8, START + 4000), cancelled(9, START - 9000)])
    with database.sessions() as session:
        left = recently_cancelled(session, "g", START - 3600, dry_run=False, before=START + 4500)
        assert left == {7: START + 100, 8: START + 4000}
        assert recently_cancelled(session, "g", START - 3600, dry_run=False) == {
            7: START + 5000, 8: START + 4000}


def test_the_cli_prints_the_report_and_writes_json(session_db, tmp_path, capsys):
    path, _ = session_db
    out = tmp_path / "diff.json"
    code = main(["backtest", "--replay-diff", "--db", f"sqlite:///{path}", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "decisions: 0 of" in printed and "run 1 (live)" in printed
    import json
    document = json.loads(out.read_text())
    assert document["differences"] == [] and document["costs"][0]["target"] == "g"
    assert math.isfinite(document["costs"][0]["gap"])


def test_a_run_whose_market_was_pruned_is_refused_in_one_line(tmp_path, capsys):
    """``bidder db prune`` removed the market the run decided on: the replay says so instead of
    failing half-way (it did, with a traceback)."""
    path = tmp_path / "pruned.db"
    record_session(path, hours=1.0)
    url = f"sqlite:///{path}"
    assert main(["db", "prune", "--db", url, "--before", str(START + 1800)]) == 0
    capsys.readouterr()
    assert main(["backtest", "--replay-diff", "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("bidder backtest: run 1: its first decision saw the market at ")
    assert "(pruned?): the market it decided on is no longer recorded" in err


@pytest.mark.parametrize("argv, message", [
    (["--replay-diff", "--strategy", "outbid"], "--strategy cannot be used with it"),
    (["--replay-diff", "--run", "9"], "no bot run with id 9"),
    (["--run", "1", "--strategy", "outbid"], "--run goes with --replay-diff"),
    ([], "give at least one --strategy"),
])
def test_cli_errors(session_db, capsys, argv, message):
    path, _ = session_db
    assert main(["backtest", "--db", f"sqlite:///{path}", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_database_without_runs_is_refused(database: Database):
    with database.sessions() as session, pytest.raises(ReplayDiffError, match="no bot run"):
        load_run(session)


# --- calls the exchange never took -----------------------------------------------------------


def replayed(database: Database) -> list:
    with database.sessions() as session:
        return replay_diff(session, load_run(session), RunSettings()).differences


def test_a_raise_the_exchange_never_took_is_not_taken_in_the_replay(rig, database):
    """A raise times out with nothing done: its outcome is unknown until reconciliation finds the
    old price, and the bot raises again at its next decision. The replay decides the raise too,
    but its exchange must not take it (it once did, then saw the bot's retry as a difference)."""
    r = rig(make_config(spot_target(), bot={"decide_interval": 60.0}))
    rival = r.market.place_rival(1084, 20.0)
    r.start()
    r.run(300)
    [order] = ours(r.market)
    r.market.reprice(rival.id, 25.0)
    r.faults.add("set_spot_price", "timeout_before")
    r.run(300)
    assert order.price == pytest.approx(25.01)
    with database.sessions() as session:
        raises = session.scalars(select(ApiJournal).where(
            ApiJournal.endpoint == "set_spot_price")).all()
    assert [j.status for j in raises] == ["unknown", "ok"]
    assert replayed(database) == []
    assert_invariants(r.market, database)


def test_a_cancel_the_exchange_never_took_holds_back_the_create_under_a_budget(rig, database):
    """Under a budget the executor sends no create while a cancel did not free its share: a
    cancel lost on the way leaves the move to the next decision, and the replay moves then too."""
    r = rig(make_config(spot_target(), budget=400.0, bot={"decide_interval": 60.0}))
    r.start()
    r.run(300)
    [held] = ours(r.market)
    r.faults.add("cancel_orders", "timeout_before")
    r.market.set_online(held.venue_id, False)
    r.run(600)
    assert not held.open and len([o for o in ours(r.market) if o.open]) == 1
    with database.sessions() as session:
        cancels = session.scalars(select(ApiJournal).where(
            ApiJournal.endpoint == "cancel_orders")).all()
    assert [j.status for j in cancels] == ["unknown", "ok"]
    assert replayed(database) == []
    assert_invariants(r.market, database)

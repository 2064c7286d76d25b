"""Killing the bot anywhere and starting a fresh one from the same database: no duplicate order at
the exchange, no order lost, nothing left in flight; orders the database did not know are adopted,
orders gone at the exchange are closed."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from bidder import journal, reconcile
from bidder.orders import open_orders
from bot_helpers import KEY, Crash, assert_books_agree, assert_one_per_server, book, \
    giga_target, make_config, ours, spot_target
from storage.models import BotOrder, BotOrderEvent

CONFIG = make_config(spot_target(count=2), giga_target(count=3, max_gpus_per_server=1),
                     bot={"create_grace_max": 300.0})
"""The quiet market publishes no snapshot while nothing changes: a GigaSPOT create killed before
it was sent is given up after ``create_grace_max``."""


def provoke(r) -> None:
    """Make the bot cancel, create, raise and edit: a held spot server goes offline, rivals
    outbid a held spot server and a held GigaSPOT machine."""
    spot = sorted(o.venue_id for o in ours(r.market) if o.kind == "spot")
    giga = sorted((o for o in ours(r.market) if o.kind == "gigaspot"), key=lambda o: o.venue_id)
    r.market.set_online(spot[0], False)
    held = next(o for o in ours(r.market) if o.venue_id == spot[1])
    r.market.place_rival(spot[1], held.price + 5.0)
    r.market.place_rival(giga[0].venue_id, giga[0].price + 5.0, pl=150)


def crash_on_call(monkeypatch, owner, name, nth=1, *, after=False) -> None:
    """Make ``owner.name`` kill the bot on its ``nth`` call: instead of running (``after``:
    once it has run)."""
    real = getattr(owner, name)
    count = 0

    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        if count == nth and not after:
            raise Crash(f"killed in {name}")
        result = real(*args, **kwargs)
        if count == nth:
            raise Crash(f"killed after {name}")
        return result

    monkeypatch.setattr(owner, name, wrapper)


def forget_an_order(database, market, server_id=None) -> None:
    """Delete an open order from the database, as if it had never been recorded."""
    with database.sessions.begin() as session:
        order = next(o for o in open_orders(session, dry_run=False) if o.market == market
                     and server_id in (None, o.server_id))
        session.execute(BotOrderEvent.__table__.delete().where(BotOrderEvent.order_ref == order.id))
        session.delete(order)


EARLY = [  # at the first creates
    ("create_order", "crash_before", 1),
    ("create_order", "crash_after", 1),
    ("create_order", "crash_before", 2),  # between two creates of one cycle
    ("create_order", "crash_after", 2),
    ("create_gigaspot_orders", "crash_before", 1),
    ("create_gigaspot_orders", "crash_after", 1),
    ("my_orders", "crash_after", 1),  # the reconciliation at start
    ("my_orders", "crash_after", 2),  # the reconciliation that looks for the new orders
]
LATE = [  # once orders are held and the market moves
    ("cancel_orders", "crash_after", 1),
    ("cancel_orders", "crash_before", 1),
    ("set_spot_price", "crash_after", 1),
    ("edit_gigaspot_orders", "crash_after", 1),
    ("create_order", "crash_after", 3),
]


def run_crashed_and_restarted(r) -> None:
    with pytest.raises(Crash):
        r.run(1800, after_job=lambda _: assert_one_per_server(r.market))
    assert not r.faults.rules, "the crash point was never reached"
    r.restart()
    r.run(600, after_job=lambda _: assert_one_per_server(r.market))
    r.bot.executor.reconcile()
    assert_one_per_server(r.market)
    assert_books_agree(r.market, r.database)
    assert r.market.stats[KEY].codes[5] == 0


@pytest.mark.parametrize("endpoint, kind, nth", EARLY)
def test_a_crash_around_an_early_call(rig, endpoint, kind, nth):
    r = rig(CONFIG)
    r.faults.add(endpoint, kind, nth)
    if endpoint == "my_orders" and nth == 1:
        with pytest.raises(Crash):
            r.start()
        r.start()
    else:
        r.start()
    if r.faults.rules:
        run_crashed_and_restarted(r)
    else:
        r.run(1200)
        assert_books_agree(r.market, r.database)
    assert len(ours(r.market)) == 5  # 2 spot servers and 3 GigaSPOT machines


@pytest.mark.parametrize("endpoint, kind, nth", LATE)
def test_a_crash_around_a_later_call(rig, endpoint, kind, nth):
    r = rig(CONFIG)
    r.start()
    r.run(300)
    assert len(ours(r.market)) == 5
    provoke(r)
    r.faults.add(endpoint, kind, nth if endpoint != "create_order" else 1)
    run_crashed_and_restarted(r)


@pytest.mark.parametrize("where", ["write", "send", "record"])
def test_a_crash_around_the_journal(rig, monkeypatch, where):
    """Before the journal row is committed (nothing sent), after it (not sent), after the reply
    but before its outcome is committed (sent, outcome lost)."""
    r = rig(CONFIG)
    crash_on_call(monkeypatch, journal.Journal, where)
    r.start()
    with pytest.raises(Crash):
        r.run(600)
    monkeypatch.undo()
    r.restart()
    r.run(600, after_job=lambda _: assert_one_per_server(r.market))
    r.bot.executor.reconcile()
    assert_books_agree(r.market, r.database)
    assert len(ours(r.market)) == 5


@pytest.mark.parametrize("step", ["_found", "_adopt", "_sync"])
def test_a_crash_inside_a_reconciliation_changes_nothing(rig, monkeypatch, step):
    r = rig(CONFIG)
    r.start()
    if step != "_found":
        r.run(300)
    if step == "_adopt":
        forget_an_order(r.database, "spot")
    crash_on_call(monkeypatch, reconcile, step, after=True)
    with pytest.raises(Crash):
        r.run(600) if step == "_found" else r.bot.executor.reconcile()
    monkeypatch.undo()
    r.restart()
    r.run(600, after_job=lambda _: assert_one_per_server(r.market))
    r.bot.executor.reconcile()
    assert_books_agree(r.market, r.database)


def test_at_start_unknown_orders_are_adopted_and_gone_ones_closed(rig, database, caplog):
    r = rig(CONFIG)
    r.start()
    r.run(300)
    r.bot.close()
    spot = sorted(o.venue_id for o in ours(r.market) if o.kind == "spot")
    forget_an_order(database, "spot", spot[0])
    gone = next(o for o in ours(r.market) if o.venue_id == spot[1])
    r.market.cancel(gone.id)  # ended at the exchange while the bot was down
    caplog.set_level(logging.INFO)
    r.start()
    adopted = [o for o in book(database) if o.adopted]
    assert [(o.server_id, o.target, o.state) for o in adopted] == [(spot[0], "s", "live")]
    assert f"adopted spot order {adopted[0].order_id} on server {spot[0]}" in caplog.text
    with database.sessions() as session:
        closed = session.scalars(select(BotOrder).where(BotOrder.order_id == gone.id)).one()
    assert (closed.state, closed.close_reason) == ("closed", "gone at Clore")
    assert_books_agree(r.market, database)


def test_a_call_cut_short_leaves_its_order_untouched_until_reconciled(rig, database):
    """Killed after the exchange lowered the price, restarted while my_orders keeps failing: the
    order is ``unknown`` (its journal entry never got an outcome), so no second lowering goes out
    within the cooldown the first one started."""
    r = rig(make_config(spot_target(), markets={"spot": {"initial_step_fraction": 0.1}}))
    rival = r.market.place_rival(1084, 20.0)
    r.start()
    r.run(120)
    r.market.cancel(rival.id)
    r.faults.add("set_spot_price", "crash_after")
    with pytest.raises(Crash):
        r.run(1200)
    [order] = ours(r.market)
    assert order.price == pytest.approx(20.01 * 0.9)  # lowered at the exchange, never recorded
    for nth in range(1, 11):  # the reconciliations at start and in the first cycle fail
        r.faults.add("my_orders", "not_sent", nth)
    bot = r.restart()
    [row] = book(database)
    assert row.state == "unknown"
    bot.decide_job()
    assert r.market.stats[KEY].requests["set_spot_price"] == 1
    r.run(1800)
    assert r.market.stats[KEY].errors["can_lower_every_600_seconds"] == 0
    with database.sessions() as session:
        lost = session.scalars(select(BotOrderEvent.detail).where(
            BotOrderEvent.kind == "outcome_unknown")).all()
    assert {"call": "lost when the previous run ended"} in lost
    assert_books_agree(r.market, database)

"""Price changes: answering outbids, stepping down after rivals leave, what the exchange teaches
(``exceeded_max_step``, ``can_lower_every_600_seconds``), and price calls whose outcome is unknown."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot_helpers import KEY, assert_books_agree, book, giga_target, make_config, ours, spot_target
from storage.models import ApiJournal, BotOrderEvent

SERVER = 1084
FLOOR = 11.1014
"""The quiet market's cheapest spot server and its floor (CLORE per day)."""


def calls(database, endpoint):
    with database.sessions() as session:
        return list(session.scalars(select(ApiJournal).where(ApiJournal.endpoint == endpoint)
                                    .order_by(ApiJournal.id)))


def kinds(database, local_id):
    with database.sessions() as session:
        return [e.kind for e in session.scalars(select(BotOrderEvent).where(
            BotOrderEvent.order_ref == local_id).order_by(BotOrderEvent.id))]


def outbid_then_rival_leaves(rig, **sections):
    """Our order outbids a rival at 20 on the cheapest server; then the rival cancels."""
    r = rig(make_config(spot_target(), **sections))
    rival = r.market.place_rival(SERVER, 20.0)
    r.start()
    r.run(120)
    [order] = ours(r.market)
    assert (order.venue_id, order.price) == (SERVER, pytest.approx(20.01))
    r.market.cancel(rival.id)
    return r, order


def test_after_the_rival_leaves_the_price_steps_down_to_the_floor_every_600_s(rig, database):
    r, order = outbid_then_rival_leaves(rig)
    r.run(5000)
    assert order.price == FLOOR
    lowerings = [(e.at, e.request["desired_price"], e.status, (e.reply or {}).get("error"))
                 for e in calls(database, "set_spot_price")]
    # the first try goes for the floor and learns the step; the retry goes as far as allowed
    assert lowerings[0][1:] == (FLOOR, "error", "exceeded_max_step")
    assert lowerings[1][1:] == (pytest.approx(20.01 * 0.9), "ok", None)
    done = [(at, price) for at, price, status, _ in lowerings[1:]]
    assert all(status == "ok" for _, _, status, _ in lowerings[1:])
    prices = [price for _, price in done]
    assert prices == sorted(prices, reverse=True) and prices[-1] == FLOOR
    for (earlier, high), (later, low) in zip(done, done[1:]):
        assert 600 <= later - earlier <= 640  # as soon as the cooldown allows, at 30-s cycles
        assert low == pytest.approx(max(FLOOR, high * 0.9))  # a full step each time
    errors = r.market.stats[KEY].errors
    assert errors["exceeded_max_step"] == 1 and errors["can_lower_every_600_seconds"] == 0


def test_a_cooldown_refusal_is_stored_and_waited_out(rig, database):
    # this config believes lowering is allowed right after creation; the exchange says otherwise
    r, order = outbid_then_rival_leaves(rig, markets={"spot": {
        "cooldown_from_creation": False, "initial_step_fraction": 0.1}})
    r.run(1800)
    tries = calls(database, "set_spot_price")
    refused = [e for e in tries if (e.reply or {}).get("error") == "can_lower_every_600_seconds"]
    assert len(refused) == 1
    told = refused[0].finished_at + refused[0].reply["time_to_lowering"]
    after = tries[tries.index(refused[0]) + 1]
    assert after.at >= told and after.status == "ok"
    assert r.market.stats[KEY].errors["can_lower_every_600_seconds"] == 1
    assert order.price < 20.01


def test_a_lowering_whose_outcome_is_unknown_is_reconciled_before_the_next(rig, database):
    r, order = outbid_then_rival_leaves(rig, markets={"spot": {"initial_step_fraction": 0.1}})
    r.faults.add("set_spot_price", "timeout_after")
    r.run(5400)
    first = calls(database, "set_spot_price")[0]
    assert first.status == "unknown"
    [row] = book(database)
    assert kinds(database, row.id)[-10:].count("outcome_unknown") <= 1
    events = kinds(database, row.id)
    assert events[events.index("outcome_unknown") + 1] == "lowered"  # learned from my_orders
    assert r.market.stats[KEY].errors["can_lower_every_600_seconds"] == 0
    assert order.price == FLOOR
    assert_books_agree(r.market, database)


@pytest.mark.parametrize("fault, happened", [("timeout_after", True), ("timeout_before", False)])
def test_a_cancel_whose_outcome_is_unknown_is_reconciled(rig, database, fault, happened):
    r = rig(make_config(spot_target()))
    r.start()
    r.run(120)
    [first] = ours(r.market)
    r.faults.add("cancel_orders", fault)
    r.market.set_online(SERVER, False)  # the target moves elsewhere
    r.run(600)
    cancels = calls(database, "cancel_orders")
    assert cancels[0].status == "unknown"
    assert len(cancels) == (1 if happened else 2)  # repeated only once reconciled
    assert not first.open
    assert len(ours(r.market)) == 1
    assert_books_agree(r.market, database)


def test_gigaspot_steps_down_probing_the_unknown_step(rig, database):
    # one GPU at most: the cheapest machine taking pl 150 is 21265 (RTX 3070, min bid 5.1252)
    r = rig(make_config(giga_target(count=1, max_gpus_per_server=1)))
    rival = r.market.place_rival(21265, 6.0, pl=150)  # our power limit: to win is to bid more
    r.start()
    r.run(300)
    [order] = ours(r.market)
    assert order.venue_id == 21265 and order.price > 6.0
    r.market.cancel(rival.id)
    r.run(3 * 3600)
    assert order.price == pytest.approx(5.1252)
    edits = [(e.at, item["price"], e.reply) for e in calls(database, "edit_gigaspot_orders")
             for item in e.request]
    refused = [e for e in edits if e[2]["failed_to_update_ids"]]
    assert 1 <= len(refused) <= 3  # each refusal halves the step tried next
    done = [(at, price) for at, price, reply in edits if reply["success_to_update_ids"]]
    for (earlier, _), (later, _) in zip(done, done[1:]):
        assert later - earlier >= 600

"""Dry run: the same engine and rules on the real market; nothing mutating is sent, and a virtual
order wins only when its price beats what the recorded rivals bid."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bidder.config import Config
from bot_helpers import KEY, make_config, spot_target
from storage.models import ApiJournal, BotDecision, BotOrder, BotOrderEvent

SERVER = 1084
MUTATING = ("create_order", "set_spot_price", "cancel_order", "cancel_orders",
            "create_gigaspot_orders", "edit_gigaspot_orders")


def test_a_dry_run_sends_nothing_and_fills_only_above_the_rivals(rig, database):
    r = rig(make_config(spot_target()), mode="dry-run")
    rival = r.market.place_rival(SERVER, 20.0)
    r.start()
    r.run(120)
    with database.sessions() as session:
        [order] = session.scalars(select(BotOrder)).all()
    assert (order.server_id, order.dry_run, order.state, order.market_state) == (
        SERVER, True, "live", "winning")
    assert order.order_id == -order.id and order.price == pytest.approx(20.01)

    r.market.reprice(rival.id, 20.01)  # a tie goes to the earlier bid: the rival's
    r.run(31)
    with database.sessions() as session:
        assert session.get_one(BotOrder, order.id).market_state == "outbid"
        outbid_seen = session.scalars(select(BotDecision.orders).order_by(
            BotDecision.cycle_id)).all()
    assert any(o and o[0]["state"] == "outbid" for o in outbid_seen)
    r.run(60)
    with database.sessions() as session:
        now = session.get_one(BotOrder, order.id)
        kinds = session.scalars(select(BotOrderEvent.kind).where(
            BotOrderEvent.order_ref == order.id).order_by(BotOrderEvent.id)).all()
        statuses = set(session.scalars(select(ApiJournal.status)))
    assert now.price == pytest.approx(20.02) and now.market_state == "winning"
    assert kinds[:2] == ["sending", "created"] and "outbid" in kinds and kinds[-1] == "won"
    assert statuses == {"dry_run"}
    requests = r.market.stats[KEY].requests
    assert [requests[e] for e in MUTATING] == [0] * len(MUTATING)
    assert requests["my_orders"] == 0  # virtual orders are never reconciled
    assert r.market.orders_of(KEY) == []


def test_a_dry_run_has_its_own_database_by_default(tmp_path: Path):
    config = Config(data_dir=tmp_path)
    assert config.storage_url("dry-run") == f"sqlite:///{tmp_path / 'bidder-dry-run.db'}"
    assert config.storage_url("live") == f"sqlite:///{tmp_path / 'bidder.db'}"
    assert config.storage_url("sim") == f"sqlite:///{tmp_path / 'bidder-sim.db'}"


@pytest.mark.parametrize("taken_away", ["offline", "rented"])
def test_a_dry_run_order_on_a_server_that_cannot_be_won_now_does_not_win(rig, database,
                                                                         taken_away):
    """Offline or rented on demand, a server runs nothing of ours whatever our price: the
    virtual fill says outbid there, as the backtest's fills do."""
    r = rig(make_config(spot_target()), mode="dry-run")
    r.market.place_rival(SERVER, 20.0)
    r.start()

    def order_on_server():
        with database.sessions() as session:
            order = session.scalars(select(BotOrder).where(BotOrder.server_id == SERVER)
                                    .order_by(BotOrder.id.desc())).first()
            kinds = session.scalars(select(BotOrderEvent.kind).where(
                BotOrderEvent.order_ref == order.id)).all()
        return order, kinds

    r.run(600)
    order, kinds = order_on_server()
    assert order.market_state == "winning" and "outbid" not in kinds
    if taken_away == "offline":
        r.market.set_online(SERVER, False)
    else:
        r.market.set_rented(SERVER, True)
    r.run(600)
    order, kinds = order_on_server()
    assert "outbid" in kinds, kinds
    assert r.market.orders_of(KEY) == []

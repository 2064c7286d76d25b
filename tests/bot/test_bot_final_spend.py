"""An order's cost does not stop at its last sync: after it ends, the next reconciliation asks
for completed orders once and records the exchange's final spend."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from bot_helpers import KEY, make_config, spot_target
from storage.models import BotOrder, BotOrderEvent

CHEAPEST_SPOT = 1084


def test_an_ended_order_gets_its_final_spend_and_completed_orders_are_asked_for_only_then(
        rig, database, monkeypatch):
    r = rig(make_config(spot_target(), bot={"reconcile_interval": 300.0}))
    asked: list[tuple[float, bool]] = []
    handle = r.market.handle

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/my_orders"):
            asked.append((r.clock.now(),
                          request.url.params.get("return_completed") == "true"))
        return handle(request)

    monkeypatch.setattr(r.market, "handle", spy)
    r.start()
    r.run(900)
    r.market.set_online(CHEAPEST_SPOT, False)
    ended_at = r.clock.now()
    r.run(1500)

    with database.sessions() as session:
        (ended,) = session.scalars(select(BotOrder).where(BotOrder.server_id == CHEAPEST_SPOT))
        finals = list(session.scalars(select(BotOrderEvent).where(
            BotOrderEvent.kind == "final_spend")))
    exchange = {o.id: o for o in r.market.orders_of(KEY)}[ended.order_id]
    assert ended.state == "closed" and not exchange.open
    assert ended.spend == exchange.spend > 0  # billed up to its very end
    assert [e.order_ref for e in finals] == [ended.id]
    completed = [at for at, flag in asked if flag]
    assert len(completed) == 1 and completed[0] > ended_at  # asked once, after it ended
    assert sum(1 for at, flag in asked if not flag and at > completed[0]) >= 2

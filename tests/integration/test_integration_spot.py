"""Spot orders through the real client against the sim: a create answers no id (found in
my_orders), raises, the lowering cooldown and step as typed errors, floors, cancels."""

from __future__ import annotations

import pytest

from bidder.api import ExceededMaxStep, FieldError, LoweringTooSoon
from bidder.sim.world import CLORE
from integration_helpers import KEY, error_text, public_servers, spot_order


def create_and_find(client, server, price):
    """Create an offer; the reply has no id, so find the order as the bot does: my_orders, by
    server id (``si``), newest creation time (``ct``)."""
    assert client.create_spot_order(spot_order(server, price)) is None
    mine = [o for o in client.my_orders().orders if o.si == server.id]
    return max(mine, key=lambda o: (o.ct, o.id))


def test_a_create_answers_no_id_and_the_order_is_found_in_my_orders(client, market, clock):
    server = public_servers(market)[0]
    price = server.floors[CLORE] * 1.1
    order = create_and_find(client, server, price)
    assert (order.price, order.currency, order.spot, order.expired) == (
        pytest.approx(price), CLORE, True, False)
    assert market.order(order.id).owner == market.user_id(KEY)

    [offer] = client.spot_marketplace(server.id).market.offers
    assert (offer.offer_id, offer.my, offer.active) == (order.id, True, True)

    second = create_and_find(client, server, price * 1.1)  # a second offer on the same server
    assert second.id != order.id and second.ct >= order.ct + 5  # create_order: once per 5 s


def test_raise_at_once_lower_after_the_cooldown_and_by_one_step(client, market, clock):
    server = public_servers(market)[1]
    order = create_and_find(client, server, server.floors[CLORE] * 2)
    raised = server.floors[CLORE] * 2.2
    client.set_spot_price(order.id, raised)  # raises are not limited
    assert market.order(order.id).price == pytest.approx(raised)

    with pytest.raises(LoweringTooSoon) as too_soon:
        client.set_spot_price(order.id, raised * 0.95)
    wait = too_soon.value.time_to_lowering
    assert 590 < wait <= 600  # the creation counts as a lowering
    assert too_soon.value.error == "can_lower_every_600_seconds"

    clock.advance(wait)
    with pytest.raises(ExceededMaxStep) as too_far:
        client.set_spot_price(order.id, raised * 0.5)
    assert too_far.value.max_step == pytest.approx(raised * 0.9)  # the sim's step: 10 %
    client.set_spot_price(order.id, too_far.value.max_step)
    assert market.order(order.id).price == pytest.approx(raised * 0.9)

    with pytest.raises(LoweringTooSoon):
        client.set_spot_price(order.id, raised * 0.85)  # the cooldown started again
    for err in (too_soon.value, too_far.value):
        assert KEY not in error_text(err)


def test_bids_below_the_floor_are_refused(client, market, clock):
    server = public_servers(market)[2]
    floor = server.floors[CLORE]
    with pytest.raises(FieldError) as too_low:
        client.create_spot_order(spot_order(server, floor * 0.5))
    assert (too_low.value.code, too_low.value.error) == (6, "price_too_low")
    assert too_low.value.reply["min_price"] == pytest.approx(floor)

    order = create_and_find(client, server, floor * 1.05)
    clock.advance(600)
    with pytest.raises(FieldError) as under:
        client.set_spot_price(order.id, floor * 0.95)  # within one step, but under the floor
    assert under.value.error == "price_too_low"
    assert market.order(order.id).price == pytest.approx(floor * 1.05)


def test_cancel_one_order_and_many(client, market):
    first, second = public_servers(market)[:2]
    a = create_and_find(client, first, first.floors[CLORE] * 1.1)
    b = create_and_find(client, second, second.floors[CLORE] * 1.1)

    client.cancel_order(a.id, issue="GPU fell off the bus")
    assert [o.id for o in client.my_orders().orders] == [b.id]
    ended = {o.id: o for o in client.my_orders(return_completed=True).orders}
    assert ended[a.id].expired is True and ended[b.id].expired is False

    with pytest.raises(FieldError) as gone:
        client.cancel_order(a.id)
    assert gone.value.error == "order_not_found"

    unknown = list(range(10, 80))  # 70 ids: two requests of at most 64
    before = market.stats[KEY].requests["cancel_orders"]
    reply = client.cancel_orders([b.id, *unknown])
    assert reply.failed_to_cancel == unknown
    assert market.stats[KEY].requests["cancel_orders"] == before + 2
    assert client.my_orders().orders == []

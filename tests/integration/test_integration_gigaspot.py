"""GigaSPOT orders through the real client against the sim: every failure list of create and
edit, orders found in the next snapshot (``owner == my_user_id``) and in my_orders, cancels."""

from __future__ import annotations

import pytest

from bidder.api.models import GigaspotEditRequest, Snapshot
from integration_helpers import gigaspot_order, lowest_pl, rentable_machines


def our_bids(client):
    """Our bids in the current snapshot: machine id -> [(bid id, price)]."""
    info = client.get_gigaspot()
    snapshot = Snapshot.model_validate_json(client.fetch_snapshot(info.v1_snapshot_url))
    return {int(machine_id): [(b.id, b.price) for b in machine.bids if b.owner == info.my_user_id]
            for machine_id, machine in snapshot.root.items()
            if any(b.owner == info.my_user_id for b in machine.bids)}


def test_create_reports_each_kind_of_failure(client, market):
    good, bad_oc, too_low = rentable_machines(market)[:3]
    reply = client.create_gigaspot_orders([
        gigaspot_order(good.id, good.gpus, good.min_bid * 1.2, lowest_pl(good)),
        gigaspot_order(bad_oc.id, bad_oc.gpus, bad_oc.min_bid * 1.2, 5000),  # pl out of range
        gigaspot_order(42, 1, 10.0, 100),  # no such machine
        gigaspot_order(too_low.id, too_low.gpus, too_low.min_bid * 0.5, lowest_pl(too_low)),
    ])
    assert reply.failed_to_oc_servers == [bad_oc.id]
    assert reply.failed_to_rent_servers == [42]
    assert reply.too_low_bids_servers == [too_low.id]

    # no order ids in the reply: the orders show in the next snapshot and in my_orders
    [(bid_id, price)] = our_bids(client)[good.id]
    assert price == pytest.approx(good.min_bid * 1.2)
    assert [(o.id, o.si) for o in client.my_orders().orders] == [(bid_id, good.id)]


def test_edit_reports_success_failure_and_too_low_then_cancel(client, market):
    first, second = rentable_machines(market)[:2]
    client.create_gigaspot_orders([
        gigaspot_order(m.id, m.gpus, m.min_bid * 1.2, lowest_pl(m)) for m in (first, second)])
    bids = our_bids(client)
    [(a, _)], [(b, _)] = bids[first.id], bids[second.id]

    reply = client.edit_gigaspot_orders([
        GigaspotEditRequest(order_id=a, price=first.min_bid * 1.5),
        GigaspotEditRequest(order_id=b, price=second.min_bid * 0.5),
        GigaspotEditRequest(order_id=999, price=1.0),
    ])
    assert (reply.success_to_update_ids, reply.too_low_bid_ids, reply.failed_to_update_ids) == (
        [a], [b], [999])
    after = our_bids(client)
    assert after[first.id] == [(a, pytest.approx(first.min_bid * 1.5))]
    assert after[second.id] == [(b, pytest.approx(second.min_bid * 1.2))]

    assert client.cancel_orders([a, b, 999]).failed_to_cancel == [999]
    assert our_bids(client) == {}

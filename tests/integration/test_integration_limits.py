"""The client's rate limiter against the exchange's: hundreds of mixed calls, creates among them,
and not one refused for the rate limit, even with no safety margin at all."""

from __future__ import annotations

import itertools

import pytest

from bidder.api import RateLimiter, clore_rate_limits
from bidder.api.models import GigaspotEditRequest
from bidder.sim.world import CLORE
from integration_helpers import (
    KEY,
    gigaspot_order,
    lowest_pl,
    public_servers,
    rentable_machines,
    spot_order,
)

CALLS = 300


@pytest.mark.parametrize("limits", [clore_rate_limits(), clore_rate_limits(1.0, 5.0)],
                         ids=["default margins", "published limits exactly"])
def test_hundreds_of_mixed_calls_are_never_refused(limits, make_client, market, clock, events):
    client = make_client(limiter=RateLimiter(clock, limits))
    servers = itertools.cycle(public_servers(market))
    machine = rentable_machines(market)[0]
    orders: list[int] = []

    def create():
        server = next(servers)
        client.create_spot_order(spot_order(server, server.floors[CLORE] * 1.1))

    def reconcile():
        orders[:] = [o.id for o in client.my_orders().orders if o.si in market.world.servers]

    def raise_newest():
        if orders:
            client.set_spot_price(orders[-1], market.order(orders[-1]).price * 1.01)

    def cancel_oldest():
        if orders:
            client.cancel_order(orders.pop(0))

    def gigaspot():
        bids = [o for o in client.my_orders().orders if o.si == machine.id]
        if bids:
            client.edit_gigaspot_orders([GigaspotEditRequest(order_id=bids[0].id,
                                                             price=bids[0].price * 1.01)])
        else:
            client.create_gigaspot_orders([gigaspot_order(machine.id, machine.gpus,
                                                          machine.min_bid * 1.1,
                                                          lowest_pl(machine))])

    def snapshot():
        client.fetch_snapshot(client.get_gigaspot().v1_snapshot_url)

    mix = [create, create, reconcile, raise_newest, lambda: client.spot_marketplace(next(servers).id),
           snapshot, client.wallets, client.marketplace, gigaspot, cancel_oldest]
    started = clock.now()
    for call in itertools.islice(itertools.cycle(mix), CALLS):
        call()

    api = [e for e in events if not e.cdn]
    assert len(api) >= CALLS
    assert all(e.outcome == "ok" for e in events)
    codes = market.stats[KEY].codes
    assert codes[5] == 0 and sum(codes.values()) == codes[0] == len(api)
    sends = [e.started_at for e in api]
    assert min(b - a for a, b in zip(sends, sends[1:])) >= 1.0 - 1e-6
    creates = [e.started_at for e in api if e.endpoint == "create_order"]
    assert len(creates) == CALLS // 5
    assert min(b - a for a, b in zip(creates, creates[1:])) >= 5.0 - 1e-6
    assert clock.now() - started < len(api) * limits.limits[0].period + len(creates) * 5.1

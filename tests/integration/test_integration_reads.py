"""Every read endpoint, and the snapshot download, through the real client against the sim."""

from __future__ import annotations

import pytest

from bidder.api.models import Snapshot
from bidder.sim.world import CLORE
from integration_helpers import KEY, public_servers


def test_wallets(client, market):
    reply = client.wallets()
    assert {w.name: w.balance for w in reply.wallets} == dict(market.options.starting_balances)
    assert all(w.deposit for w in reply.wallets)


def test_marketplace_lists_the_public_online_servers(client, market):
    reply = client.marketplace()
    listed = {s.id: s for s in reply.servers}
    assert sorted(listed) == sorted(s.id for s in public_servers(market))
    for server in public_servers(market):
        entry = listed[server.id]
        assert entry.specs.gpu == f"{server.gpus}x {server.gpu.name}"
        assert entry.price.spot == server.floors
        assert entry.reliability == server.reliability
        assert entry.mrl == server.mrl_hours


def test_spot_marketplace_shows_the_book_and_the_floor(client, market):
    server = public_servers(market)[0]
    empty = client.spot_marketplace(server.id)
    assert empty.exists and empty.market.offers == []
    assert empty.market.server.min_pricing == server.floors
    assert empty.currency_rates_in_usd[CLORE] == pytest.approx(market.exchange.clore_usd)

    rival = market.place_rival(server.id, server.floors[CLORE] * 1.3)
    [offer] = client.spot_marketplace(server.id).market.offers
    assert (offer.offer_id, offer.active, offer.my) == (rival.id, True, False)
    assert offer.bid == pytest.approx(server.floors[CLORE] * 1.3)


def test_spot_marketplace_of_a_server_that_does_not_exist(client):
    reply = client.spot_marketplace(999)
    assert reply.exists is False and reply.market is None


def test_get_gigaspot_and_the_snapshot_it_points_to(client, market, events):
    info = client.get_gigaspot()
    assert info.my_user_id == market.user_id(KEY)
    assert info.clore_price == pytest.approx(market.exchange.clore_usd)
    assert info.creation_fees == {CLORE: market.options.creation_fee_clore}

    snapshot = Snapshot.model_validate_json(client.fetch_snapshot(info.v1_snapshot_url))
    assert sorted(map(int, snapshot.root)) == sorted(market.world.machines)
    assert market.cdn_stats.fetches == 1
    assert market.cdn_stats.with_auth_header == 0  # the key never goes to the CDN
    assert [(e.endpoint, e.cdn, e.outcome) for e in events] == [
        ("get_gigaspot", False, "ok"), ("snapshot", True, "ok")]

"""The documented reply examples parse into the reply models, keeping fields we do not model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bidder.api.models import (
    GigaspotInfo,
    MarketplaceReply,
    MyOrdersReply,
    Snapshot,
    SpotMarketplaceReply,
    WalletsReply,
)

from api_fakes import FIXTURES, fixture


def test_wallets_example() -> None:
    reply = WalletsReply.model_validate(fixture("wallets.json"))
    assert reply.code == 0
    (wallet,) = reply.wallets
    assert (wallet.name, wallet.balance, wallet.withdrawal_fee) == ("bitcoin", 0.00153176, 0.0001)
    assert wallet.deposit == "tb1q6erw7v02t7hakgmlcl4wfnlykzqj05alndruwr"


def test_marketplace_example() -> None:
    reply = MarketplaceReply.model_validate(fixture("marketplace.json"))
    (server,) = reply.servers
    assert (server.id, server.owner, server.mrl, server.rented) == (6, 4, 73, False)
    assert server.price is not None and server.price.spot == {"bitcoin": 0.000001}
    assert server.specs is not None and server.specs.net is not None and server.specs.net.cc == "CZ"
    assert reply.my_servers == [1, 2, 4]


def test_my_orders_example_with_its_trailing_commas_removed() -> None:
    reply = MyOrdersReply.model_validate(fixture("my_orders.json"))
    assert reply.limit == 13
    first, second = reply.orders
    assert (first.id, first.si, first.ct, first.currency) == (38, 6, 1667401396, "bitcoin")
    assert first.spot is None
    assert first.pub_cluster == ["n1.c1.clorecloud.net", "n2.c1.clorecloud.net"]
    assert (second.id, second.spot, second.expired, second.tcp_ports) == (36, True, True, [])


def test_spot_marketplace_example() -> None:
    reply = SpotMarketplaceReply.model_validate(fixture("spot_marketplace.json"))
    assert reply.exists is True and reply.market is not None
    (offer,) = reply.market.offers
    assert (offer.offer_id, offer.bid, offer.active, offer.my) == (39, 0.0000042, True, True)
    assert reply.market.server is not None
    assert reply.market.server.min_pricing == {"bitcoin": 0.000001}
    assert reply.market.server.mrl == 262800


def test_spot_offers_with_currencies_and_rates_inside_market() -> None:
    """As public clients typed from live replies show it: ``currency`` on each offer and
    ``currency_rates_in_usd`` inside ``market``; the documented top level still counts."""
    data = fixture("spot_marketplace.json")
    data["market"]["offers"] = [
        {"offer_id": 39, "bid": 4.2e-06, "active": True, "my": True, "currency": "bitcoin"},
        {"offer_id": 40, "bid": 150.0, "active": False, "my": False,
         "currency": "CLORE-Blockchain"},
        {"offer_id": 41, "bid": 3.0, "active": False, "my": False}]
    data["market"]["currency_rates_in_usd"] = {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}
    reply = SpotMarketplaceReply.model_validate(data)
    assert [o.currency for o in reply.market.offers] == ["bitcoin", "CLORE-Blockchain", None]
    assert reply.currency_rates_in_usd is None
    assert reply.rates_in_usd() == {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}

    data["currency_rates_in_usd"] = {"bitcoin": 61000.0, "USD-Blockchain": 1.0}
    both = SpotMarketplaceReply.model_validate(data).rates_in_usd()
    assert both == {"bitcoin": 61000.0, "CLORE-Blockchain": 0.03, "USD-Blockchain": 1.0}
    del data["market"]["currency_rates_in_usd"]
    assert SpotMarketplaceReply.model_validate(data).rates_in_usd() == {
        "bitcoin": 61000.0, "USD-Blockchain": 1.0}
    assert SpotMarketplaceReply.model_validate(fixture("spot_marketplace.json")).rates_in_usd() \
        is None


def test_get_gigaspot_example() -> None:
    info = GigaspotInfo.model_validate(fixture("get_gigaspot.json"))
    assert info.my_user_id == 3
    assert info.v1_snapshot_url.endswith("_1735176176.json")
    assert info.creation_fees == {"CLORE-Blockchain": 0.045}
    assert info.clore_price is None


def test_gigaspot_snapshot_example() -> None:
    snapshot = Snapshot.model_validate_json((FIXTURES / "gigaspot_snapshot.json").read_bytes())
    machines = snapshot.root
    assert sorted(machines) == ["35083", "40329"]
    idle, rented = machines["35083"], machines["40329"]
    assert idle.bids == [] and len(idle.gpus) == 8 and idle.gpus[0].pl == [70, 100]
    assert (idle.max_rental_length, idle.min_bid, idle.reliability) == (792000, 13.5067, 0.974)
    (bid,) = rented.bids
    assert (bid.owner, bid.id, bid.active, bid.price, bid.currency, bid.pl) == (
        2, 542567, True, 0.2, "CLORE-Blockchain", 400
    )
    assert rented.gpus[0].model == "RTX 4090" and rented.energy_price == 0.042


def test_unknown_fields_are_kept_at_every_level() -> None:
    data = fixture("spot_marketplace.json")
    data["currency_rates_in_usd"] = {"bitcoin": 97000.0}
    data["new_top_level"] = 1
    data["market"]["offers"][0]["rank"] = 2
    reply = SpotMarketplaceReply.model_validate(data)
    assert reply.currency_rates_in_usd == {"bitcoin": 97000.0}
    assert reply.model_extra == {"new_top_level": 1}
    assert reply.market is not None and reply.market.offers[0].model_extra == {"rank": 2}
    assert reply.model_dump()["market"]["offers"][0]["rank"] == 2


def test_snapshot_refuses_non_integer_machine_ids() -> None:
    data = fixture("gigaspot_snapshot.json")
    data["abc"] = data.pop("35083")
    with pytest.raises(ValidationError, match="machine id 'abc'"):
        Snapshot.model_validate(data)

"""Every endpoint: method, path, query, body, headers and reply model, against a fake server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import bidder.config
from api_fakes import CDN, KEY, FakeServer, fixture
from bidder.api import DEFAULT_BASE_URL, CloreClient
from bidder.api.models import (
    CancelOrdersReply,
    GigaspotCreateReply,
    GigaspotEditReply,
    GigaspotEditRequest,
    GigaspotInfo,
    GigaspotOrderRequest,
    MarketplaceReply,
    MyOrdersReply,
    OcSetting,
    SpotMarketplaceReply,
    SpotOrderRequest,
    WalletsReply,
)

GIGA_ORDER = GigaspotOrderRequest(
    image="cloreai/miner", renting_server=40329, price=13.6, oc=[OcSetting(pl=300, core_lock=1500)]
)
GIGA_EDIT = GigaspotEditRequest(order_id=542567, price=14.2)
SPOT_REQUEST = fixture("create_order_spot_request.json")

READS: list[tuple[str, Callable[[CloreClient], Any], dict[str, str], Any, type[BaseModel]]] = [
    ("wallets", lambda c: c.wallets(), {}, fixture("wallets.json"), WalletsReply),
    ("marketplace", lambda c: c.marketplace(), {}, fixture("marketplace.json"), MarketplaceReply),
    ("my_orders", lambda c: c.my_orders(), {}, fixture("my_orders.json"), MyOrdersReply),
    (
        "my_orders",
        lambda c: c.my_orders(return_completed=True),
        {"return_completed": "true"},
        fixture("my_orders.json"),
        MyOrdersReply,
    ),
    (
        "spot_marketplace",
        lambda c: c.spot_marketplace(6),
        {"market": "6"},
        fixture("spot_marketplace.json"),
        SpotMarketplaceReply,
    ),
    ("get_gigaspot", lambda c: c.get_gigaspot(), {}, fixture("get_gigaspot.json"), GigaspotInfo),
]


@pytest.mark.parametrize(("name", "call", "params", "reply", "model"), READS)
def test_reads_send_a_keyed_get_and_parse_the_documented_reply(
    client: CloreClient,
    server: FakeServer,
    name: str,
    call: Callable[[CloreClient], Any],
    params: dict[str, str],
    reply: Any,
    model: type[BaseModel],
) -> None:
    server.on(name, reply)
    result = call(client)
    (seen,) = server.seen
    assert (seen.method, seen.path, seen.params, seen.body) == ("GET", f"/v1/{name}", params, None)
    assert seen.headers["auth"] == KEY
    assert "authorization" not in seen.headers
    assert type(result) is model
    assert result == model.model_validate(reply)


MUTATIONS: list[tuple[str, Callable[[CloreClient], Any], Any, Any, Any]] = [
    (
        "create_order",
        lambda c: c.create_spot_order(SpotOrderRequest(**SPOT_REQUEST)),
        SPOT_REQUEST,
        fixture("ok.json"),
        None,
    ),
    (
        "set_spot_price",
        lambda c: c.set_spot_price(39, 0.0000032),
        {"order_id": 39, "desired_price": 0.0000032},
        fixture("ok.json"),
        None,
    ),
    ("cancel_order", lambda c: c.cancel_order(39), {"id": 39}, {"code": 0}, None),
    (
        "cancel_order",
        lambda c: c.cancel_order(39, issue="GPU #1 Was overheating and throttling"),
        {"id": 39, "issue": "GPU #1 Was overheating and throttling"},
        {"code": 0},
        None,
    ),
    (
        "cancel_orders",
        lambda c: c.cancel_orders([1, 2, 3]),
        {"order_ids": [1, 2, 3]},
        {"code": 0, "failed_to_cancel": [2]},
        CancelOrdersReply(code=0, failed_to_cancel=[2]),
    ),
    (
        "create_gigaspot_orders",
        lambda c: c.create_gigaspot_orders([GIGA_ORDER]),
        [
            {
                "currency": "CLORE-Blockchain",
                "image": "cloreai/miner",
                "renting_server": 40329,
                "price": 13.6,
                "oc": [{"pl": 300, "core_lock": 1500}],
            }
        ],
        {
            "code": 0,
            "failed_to_oc_servers": [],
            "failed_to_rent_servers": [],
            "too_low_bids_servers": [40329],
        },
        GigaspotCreateReply(code=0, too_low_bids_servers=[40329]),
    ),
    (
        "edit_gigaspot_orders",
        lambda c: c.edit_gigaspot_orders([GIGA_EDIT]),
        [{"order_id": 542567, "price": 14.2}],
        {
            "code": 0,
            "success_to_update_ids": [542567],
            "failed_to_update_ids": [],
            "too_low_bid_ids": [],
        },
        GigaspotEditReply(code=0, success_to_update_ids=[542567]),
    ),
]


@pytest.mark.parametrize(("name", "call", "body", "reply", "expected"), MUTATIONS)
def test_mutations_post_a_json_body_and_parse_the_reply(
    client: CloreClient,
    server: FakeServer,
    name: str,
    call: Callable[[CloreClient], Any],
    body: Any,
    reply: Any,
    expected: Any,
) -> None:
    server.on(name, reply)
    assert call(client) == expected
    (seen,) = server.seen
    assert (seen.method, seen.path, seen.params, seen.body) == ("POST", f"/v1/{name}", {}, body)
    assert seen.headers["auth"] == KEY
    assert seen.headers["content-type"] == "application/json"


def test_cancel_orders_sends_batches_of_64_and_merges_the_replies(
    client: CloreClient, server: FakeServer
) -> None:
    ids = list(range(1000, 1130))
    server.on(
        "cancel_orders",
        {"code": 0, "failed_to_cancel": [1001]},
        {"code": 0, "failed_to_cancel": []},
        {"code": 0, "failed_to_cancel": [1129], "note": "last"},
    )
    reply = client.cancel_orders(ids)
    assert [s.body["order_ids"] for s in server.seen] == [ids[:64], ids[64:128], ids[128:]]
    assert reply.failed_to_cancel == [1001, 1129]
    assert reply.model_extra == {"note": "last"}
    assert server.times() == pytest.approx([0.0, 1.05, 2.10])


def test_a_failed_cancel_batch_says_what_was_done_before_it(
    client: CloreClient, server: FakeServer
) -> None:
    server.on("cancel_orders", {"code": 0, "failed_to_cancel": [7]}, {"code": 2, "error": "bad"})
    with pytest.raises(Exception) as caught:
        client.cancel_orders(list(range(200)))
    assert len(server.seen) == 2
    assert caught.value.__notes__ == [
        "the first 64 ids were sent in earlier batches (failed to cancel: [7]); "
        "the last 72 were not sent"
    ]


def test_empty_batches_send_nothing(client: CloreClient, server: FakeServer) -> None:
    assert client.cancel_orders([]) == CancelOrdersReply(code=0)
    assert client.create_gigaspot_orders([]) == GigaspotCreateReply(code=0)
    assert client.edit_gigaspot_orders([]) == GigaspotEditReply(code=0)
    assert server.seen == []


def test_bad_arguments_are_refused_before_sending(client: CloreClient, server: FakeServer) -> None:
    with pytest.raises(ValueError, match="price must be a positive number"):
        client.set_spot_price(39, 0.0)
    with pytest.raises(ValueError, match="price must be a positive number"):
        client.set_spot_price(39, float("nan"))
    with pytest.raises(ValueError, match="issue is 2049 characters, at most 2048"):
        client.cancel_order(39, issue="x" * 2049)
    with pytest.raises(ValueError, match="absolute http"):
        client.fetch_snapshot("/prod_1.json")
    assert server.seen == []


def test_fetch_snapshot_downloads_without_the_key_and_outside_the_limiter(
    client: CloreClient, server: FakeServer, cdn: FakeServer
) -> None:
    body = b'{"35083": {"bids": []}}'
    server.on("wallets", fixture("wallets.json"), fixture("wallets.json"))
    cdn.on("prod_6K80i2Tyvm_1735176176.json", httpx.Response(200, content=body))
    client.wallets()
    assert client.fetch_snapshot(f"{CDN}/prod_6K80i2Tyvm_1735176176.json") == body
    client.wallets()
    (seen,) = cdn.seen
    assert seen.at == server.seen[0].at  # not held back by the 1 s spacing
    assert "auth" not in seen.headers
    assert all(KEY not in value for value in seen.headers.values())
    assert server.times() == pytest.approx([0.0, 1.05])  # and it did not use an API slot


def test_base_url_is_configurable(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    client = make_client(base_url="http://127.0.0.1:8765/sim/v1/")
    server.on("wallets", fixture("wallets.json"))
    client.wallets()
    assert server.seen[0].path == "/sim/v1/wallets"


def test_default_base_url_matches_the_config_default() -> None:
    assert DEFAULT_BASE_URL == bidder.config.DEFAULT_BASE_URL == "https://api.clore.ai/v1"


def test_context_manager_closes_the_client(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    with make_client() as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        client.wallets()
    assert server.seen == []

"""Failures become typed errors naming the endpoint; a mutation never hides an unknown outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api_fakes import FakeServer, fixture, raises, status
from bidder.api import (
    ApiError,
    CallEvent,
    CloreClient,
    CloreError,
    ConnectionFailed,
    DatabaseError,
    ExceededMaxStep,
    FieldError,
    HttpError,
    InvalidEndpoint,
    InvalidInput,
    InvalidReply,
    InvalidToken,
    LoweringTooSoon,
    OutcomeUnknown,
    RateLimited,
    RequestNotSent,
    RequestTimeout,
)
from bidder.api.models import GigaspotOrderRequest, OcSetting, SpotOrderRequest

SPOT_ORDER = SpotOrderRequest(
    currency="CLORE-Blockchain", image="ubuntu", renting_server=6, spotprice=25.0
)
GIGA_ORDER = GigaspotOrderRequest(
    image="cloreai/miner", renting_server=40329, price=13.6, oc=[OcSetting(pl=300)]
)
CODES = [
    (1, DatabaseError),
    (2, InvalidInput),
    (3, InvalidToken),
    (4, InvalidEndpoint),
    (5, RateLimited),
    (6, FieldError),
    (42, ApiError),
]


@pytest.mark.parametrize(("code", "error_type"), CODES)
def test_each_code_has_its_error(
    make_client: Callable[..., CloreClient],
    server: FakeServer,
    code: int,
    error_type: type[ApiError],
) -> None:
    client = make_client(max_retries=0)
    reply = {"code": code, "error": "said the server"}
    server.on("spot_marketplace", reply)
    with pytest.raises(ApiError) as caught:
        client.spot_marketplace(6)
    err = caught.value
    assert type(err) is error_type
    assert (err.endpoint, err.code, err.error, err.reply) == (
        "spot_marketplace",
        code,
        "said the server",
        reply,
    )
    assert str(err).startswith(f"spot_marketplace: code {code} (")
    assert str(err).endswith(": said the server")


def test_exceeded_max_step_carries_the_lowest_allowed_price(
    client: CloreClient, server: FakeServer
) -> None:
    server.on("set_spot_price", fixture("set_spot_price_exceeded_max_step.json"))
    with pytest.raises(ExceededMaxStep) as caught:
        client.set_spot_price(39, 0.000002)
    assert isinstance(caught.value, FieldError)
    assert (caught.value.max_step, caught.value.error) == (0.0000032, "exceeded_max_step")
    assert len(server.seen) == 1


def test_lowering_too_soon_carries_the_seconds_to_wait(
    client: CloreClient, server: FakeServer
) -> None:
    server.on("set_spot_price", fixture("set_spot_price_can_lower_every_600_seconds.json"))
    with pytest.raises(LoweringTooSoon) as caught:
        client.set_spot_price(39, 0.0000022)
    assert isinstance(caught.value, FieldError)
    assert caught.value.time_to_lowering == 513
    assert str(caught.value) == (
        "set_spot_price: code 6 (see the error field): can_lower_every_600_seconds"
    )


def test_code_6_without_its_number_stays_a_plain_field_error(
    client: CloreClient, server: FakeServer
) -> None:
    server.on("set_spot_price", {"code": 6, "error": "exceeded_max_step"})
    with pytest.raises(FieldError) as caught:
        client.set_spot_price(39, 0.000002)
    assert type(caught.value) is FieldError


def test_an_api_code_in_a_non_2xx_reply_wins_over_the_status(
    client: CloreClient, server: FakeServer
) -> None:
    server.on("wallets", status(401, {"code": 3}))
    with pytest.raises(InvalidToken):
        client.wallets()


FAULTS = [
    (
        status(500, text="<html>Internal Server Error</html>"),
        HttpError,
        "HTTP 500: <html>Internal Server Error</html>",
    ),
    (raises(httpx.ReadTimeout, "timed out"), RequestTimeout, "timed out (ReadTimeout: timed out)"),
    (
        raises(httpx.RemoteProtocolError, "peer closed"),
        ConnectionFailed,
        "connection failed (RemoteProtocolError: peer closed)",
    ),
    (raises(httpx.ConnectError, "refused"), RequestNotSent, "not sent (ConnectError: refused)"),
    (
        status(200, text="<html>maintenance</html>"),
        InvalidReply,
        "not a JSON object: <html>maintenance</html>",
    ),
    ([1, 2], InvalidReply, "not a JSON object: [1,2]"),
    (
        {"code": 0, "wallets": "none"},
        InvalidReply,
        "does not match WalletsReply: wallets: Input should be a valid list",
    ),
    ({"wallets": []}, InvalidReply, 'no integer code: {"wallets":[]}'),
    ({"code": "2"}, InvalidReply, 'no integer code: {"code":"2"}'),
    ({"code": False}, InvalidReply, 'no integer code: {"code":false}'),
]


@pytest.mark.parametrize(("answer", "error_type", "text"), FAULTS)
def test_transport_faults_become_typed_errors(
    make_client: Callable[..., CloreClient],
    server: FakeServer,
    answer: Any,
    error_type: type[CloreError],
    text: str,
) -> None:
    client = make_client(max_retries=0)
    server.on("wallets", answer)
    with pytest.raises(error_type) as caught:
        client.wallets()
    assert type(caught.value) is error_type
    assert str(caught.value) == f"wallets: {text}"
    assert caught.value.endpoint == "wallets"


def test_a_4xx_is_not_retried(client: CloreClient, server: FakeServer) -> None:
    server.on("marketplace", status(404, text="Not Found"))
    with pytest.raises(HttpError) as caught:
        client.marketplace()
    assert (caught.value.status, caught.value.transient) == (404, False)
    assert len(server.seen) == 1


DROPS = [
    (raises(httpx.ReadTimeout, "timed out"), RequestTimeout),
    (raises(httpx.WriteTimeout, "timed out"), RequestTimeout),
    (raises(httpx.RemoteProtocolError, "Server disconnected"), ConnectionFailed),
    (raises(httpx.ReadError, "connection reset"), ConnectionFailed),
    (status(500, text="oops"), HttpError),
    (status(200, text="<html>"), InvalidReply),
    ({"code": "0"}, InvalidReply),
    ({"code": 1}, DatabaseError),
]
MUTATIONS = [
    ("create_order", lambda c: c.create_spot_order(SPOT_ORDER)),
    ("create_gigaspot_orders", lambda c: c.create_gigaspot_orders([GIGA_ORDER])),
    ("set_spot_price", lambda c: c.set_spot_price(39, 30.0)),
    ("cancel_order", lambda c: c.cancel_order(39)),
]


@pytest.mark.parametrize(("answer", "cause"), DROPS)
@pytest.mark.parametrize(("name", "call"), MUTATIONS)
def test_a_mutation_whose_outcome_is_hidden_is_never_retried(
    client: CloreClient,
    server: FakeServer,
    events: list[CallEvent],
    name: str,
    call: Callable[[CloreClient], Any],
    answer: Any,
    cause: type[CloreError],
) -> None:
    server.on(name, answer, fixture("ok.json"))
    with pytest.raises(OutcomeUnknown) as caught:
        call(client)
    assert len(server.seen) == 1
    err = caught.value
    assert type(err.cause) is cause and err.__cause__ is err.cause
    assert err.endpoint == name
    assert str(err) == f"{name}: outcome unknown, reconcile before retrying ({err.cause.message})"
    assert [e.outcome for e in events] == ["unknown"]


def test_a_mutation_that_was_not_sent_says_so_and_is_not_retried(
    client: CloreClient, server: FakeServer, events: list[CallEvent]
) -> None:
    refused = raises(httpx.ConnectError, "[Errno 111] Connection refused")
    server.on("create_order", refused, fixture("ok.json"))
    with pytest.raises(RequestNotSent, match=r"create_order: not sent \(ConnectError"):
        client.create_spot_order(SPOT_ORDER)
    assert len(server.seen) == 1
    assert [e.outcome for e in events] == ["not_sent"]


@pytest.mark.parametrize("exc_type", [httpx.ConnectTimeout, httpx.PoolTimeout])
def test_connect_and_pool_timeouts_mean_not_sent(
    client: CloreClient, server: FakeServer, exc_type: type[httpx.RequestError]
) -> None:
    server.on("cancel_order", raises(exc_type))
    with pytest.raises(RequestNotSent):
        client.cancel_order(39)


def test_a_refused_mutation_is_raised_as_is(client: CloreClient, server: FakeServer) -> None:
    server.on("create_order", {"code": 2})
    with pytest.raises(InvalidInput):
        client.create_spot_order(SPOT_ORDER)
    assert len(server.seen) == 1

"""Retries through the clock: reads repeat transient faults, every call waits out rate limits."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import httpx
import pytest

from api_fakes import CDN, T0, FakeServer, fixture, raises, status
from bidder.api import (
    CallEvent,
    CloreClient,
    Priority,
    RateLimited,
    RequestNotSent,
    RequestTimeout,
    SnapshotNotFound,
)
from bidder.api.ratelimit import HELD_POLL
from bidder.api.models import SpotOrderRequest
from bidder.clock import ManualClock

SPOT_ORDER = SpotOrderRequest(currency="bitcoin", image="ubuntu", renting_server=6, spotprice=1e-5)
SNAPSHOT_URL = f"{CDN}/prod_x_1.json"


def test_reads_retry_transient_faults_with_exponential_backoff(
    client: CloreClient, server: FakeServer, events: list[CallEvent]
) -> None:
    server.on(
        "my_orders",
        raises(httpx.ConnectError),
        status(502, text="bad gateway"),
        {"code": 1},
        status(200, text="{not json"),
        fixture("my_orders.json"),
    )
    assert len(client.my_orders().orders) == 2
    assert server.times() == [0.0, 2.0, 6.0, 14.0, 30.0]
    assert [(e.attempt, e.outcome, e.code, e.http_status) for e in events] == [
        (1, "not_sent", None, None),
        (2, "http_error", None, 502),
        (3, "api_error", 1, 200),
        (4, "invalid_reply", None, 200),
        (5, "ok", 0, 200),
    ]
    assert all(e.priority is Priority.RECONCILE and e.endpoint == "my_orders" for e in events)


@pytest.mark.parametrize("fault", [httpx.ReadTimeout, httpx.WriteTimeout])
def test_a_call_sent_without_a_reply_holds_the_key_for_another_timeout(
    make_client: Callable[..., CloreClient], server: FakeServer, fault: type[Exception]
) -> None:
    """The exchange counts a request when it arrives; one that timed out may still be on its way,
    so no call of the key (another client sharing the limiter included) goes right behind it."""
    client = make_client(timeout=10.0, max_retries=0)
    other = make_client(timeout=10.0, limiter=client.limiter)
    server.on("my_orders", raises(fault))
    server.on("wallets", fixture("wallets.json"))
    with pytest.raises(RequestTimeout):
        client.my_orders()
    other.wallets()
    assert server.times() == [0.0, pytest.approx(11.0, abs=HELD_POLL)]


def test_a_call_that_never_left_frees_the_key_at_once(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    client = make_client(timeout=10.0, max_retries=0)
    server.on("my_orders", raises(httpx.ConnectTimeout))
    server.on("wallets", fixture("wallets.json"))
    with pytest.raises(RequestNotSent):
        client.my_orders()
    client.wallets()
    assert server.times() == [0.0, pytest.approx(1.0, abs=HELD_POLL)]


def test_reads_give_up_after_max_retries(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    client = make_client(max_retries=2)
    server.on("wallets", *[raises(httpx.ConnectError)] * 3)
    with pytest.raises(RequestNotSent) as caught:
        client.wallets()
    assert len(server.seen) == 3
    assert caught.value.__notes__ == ["gave up after 3 attempts"]


def test_code_5_backs_off_and_retries_even_a_create(
    client: CloreClient, server: FakeServer, events: list[CallEvent]
) -> None:
    server.on("create_order", {"code": 5}, {"code": 5}, fixture("ok.json"))
    client.create_spot_order(SPOT_ORDER)
    # backoffs of 2 s and 4 s, but create_order's own 5.05 s spacing is longer
    assert server.times() == pytest.approx([0.0, 5.05, 10.10])
    assert [e.outcome for e in events] == ["rate_limited", "rate_limited", "ok"]


def test_code_5_backoff_grows(client: CloreClient, server: FakeServer) -> None:
    server.on("wallets", {"code": 5}, {"code": 5}, fixture("wallets.json"))
    client.wallets()
    assert server.times() == [0.0, 2.0, 6.0]


def test_a_backoff_holds_back_every_client_sharing_the_limiter(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    poller = make_client(max_retries=0)
    executor = make_client(limiter=poller.limiter)
    server.on("wallets", status(429, headers={"Retry-After": "20"}))
    server.on("cancel_order", fixture("ok.json"))
    with pytest.raises(RateLimited):
        poller.wallets()
    executor.cancel_order(1)
    assert server.times() == [0.0, 20.0]
    assert make_client().limiter is not poller.limiter  # each client gets its own unless given one


def test_http_429_honours_retry_after_in_seconds(
    client: CloreClient, server: FakeServer, events: list[CallEvent]
) -> None:
    slow_down = status(429, headers={"Retry-After": "7"}, text="slow down")
    server.on("get_gigaspot", slow_down, fixture("get_gigaspot.json"))
    client.get_gigaspot()
    assert server.times() == [0.0, 7.0]
    assert (events[0].outcome, events[0].http_status, events[0].code) == ("rate_limited", 429, 5)


def test_http_429_honours_retry_after_as_a_date(client: CloreClient, server: FakeServer) -> None:
    when = email.utils.formatdate(T0 + 12, usegmt=True)
    later = status(429, headers={"Retry-After": when})
    server.on("get_gigaspot", later, fixture("get_gigaspot.json"))
    client.get_gigaspot()
    assert server.times() == [0.0, 12.0]


def test_rate_limited_is_raised_when_the_retries_are_spent(
    make_client: Callable[..., CloreClient], server: FakeServer
) -> None:
    client = make_client(max_retries=2)
    server.on("cancel_orders", *[status(429, headers={"Retry-After": "3"})] * 3)
    with pytest.raises(RateLimited) as caught:
        client.cancel_orders([1])
    assert server.times() == [0.0, 3.0, 6.0]
    err = caught.value
    assert (err.code, err.http_status, err.retry_after) == (5, 429, 3.0)
    assert err.__notes__ == ["gave up after 3 attempts"]


def test_snapshot_404_is_not_found_and_not_retried(
    client: CloreClient, cdn: FakeServer, events: list[CallEvent]
) -> None:
    cdn.on("prod_x_1.json", status(404, text="NoSuchKey"))
    with pytest.raises(SnapshotNotFound) as caught:
        client.fetch_snapshot(SNAPSHOT_URL)
    err = caught.value
    assert (err.endpoint, err.status, err.url) == ("snapshot", 404, SNAPSHOT_URL)
    assert len(cdn.seen) == 1
    assert [(e.endpoint, e.cdn, e.outcome, e.http_status, e.code) for e in events] == [
        ("snapshot", True, "http_error", 404, None)
    ]


def test_snapshot_downloads_retry_like_reads(
    client: CloreClient, cdn: FakeServer, events: list[CallEvent]
) -> None:
    cdn.on(
        "prod_x_1.json",
        raises(httpx.ReadTimeout),
        status(503),
        status(429, headers={"Retry-After": "5"}),
        httpx.Response(200, content=b"{}"),
    )
    assert client.fetch_snapshot(SNAPSHOT_URL) == b"{}"
    assert cdn.times() == [0.0, 2.0, 6.0, 11.0]
    assert [e.outcome for e in events] == ["timeout", "http_error", "rate_limited", "ok"]
    assert client.limiter.snapshot().blocked_until is None  # the CDN's 429 does not stop the API


def test_events_time_each_attempt(
    clock: ManualClock, client: CloreClient, server: FakeServer, events: list[CallEvent]
) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(0.25)
        return httpx.Response(200, json=fixture("wallets.json"))

    server.on("wallets", fixture("wallets.json"), slow)
    client.wallets()
    client.wallets()
    assert [(e.method, e.started_at - T0, e.finished_at - T0) for e in events] == [
        ("GET", 0.0, 0.0),
        ("GET", pytest.approx(1.05), pytest.approx(1.30)),
    ]


def test_a_failing_observer_does_not_fail_the_call(
    make_client: Callable[..., CloreClient], server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: CallEvent) -> None:
        raise RuntimeError("disk full")

    client = make_client(observer=broken)
    server.on("create_order", fixture("ok.json"))
    client.create_spot_order(SPOT_ORDER)
    assert "call observer failed" in caplog.text and "disk full" in caplog.text

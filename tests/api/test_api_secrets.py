"""The API key never leaks: not to logs (ours, httpx's, httpcore's), errors, events, reprs, CDN."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from api_fakes import CDN, KEY, FakeServer, fixture, raises, status
from bidder.api import CallEvent, CloreClient, CloreError
from bidder.api.models import SpotOrderRequest
from bidder.clock import ManualClock

ORDER = SpotOrderRequest(currency="bitcoin", image="ubuntu", renting_server=6, spotprice=1e-6)


def echo_key(request: httpx.Request) -> httpx.Response:
    """A misbehaving server that quotes the key back."""
    return httpx.Response(500, text=f"key {request.headers['auth']} refused")


def fail_quoting_key(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError(f"reset while sending auth={request.headers['auth']}", request=request)


FAILURES: list[tuple[str, Callable[[CloreClient], Any], list[Any]]] = [
    ("wallets", lambda c: c.wallets(), [{"code": 3, "error": "invalid token"}]),
    ("wallets", lambda c: c.wallets(), [echo_key] * 5),
    ("wallets", lambda c: c.wallets(), [raises(httpx.ConnectError)] * 5),
    ("my_orders", lambda c: c.my_orders(), [fail_quoting_key] * 5),
    ("create_order", lambda c: c.create_spot_order(ORDER), [raises(httpx.ReadTimeout)]),
    ("create_order", lambda c: c.create_spot_order(ORDER), [echo_key]),
    ("create_order", lambda c: c.create_spot_order(ORDER), [fail_quoting_key]),
    ("set_spot_price", lambda c: c.set_spot_price(39, 1.0), [status(200, text="garbage")]),
    ("set_spot_price", lambda c: c.set_spot_price(39, 1.0), [{"code": 5}] * 5),
]


@pytest.mark.parametrize(("name", "call", "answers"), FAILURES)
def test_errors_logs_and_events_never_hold_the_key(
    client: CloreClient,
    server: FakeServer,
    events: list[CallEvent],
    caplog: pytest.LogCaptureFixture,
    name: str,
    call: Callable[[CloreClient], Any],
    answers: list[Any],
) -> None:
    server.on(name, *answers)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(CloreError) as caught:
            call(client)
    assert server.seen[0].headers["auth"] == KEY  # the key was really sent
    err = caught.value
    texts = [str(err), repr(err), "".join(traceback.format_exception(err)), repr(vars(err))]
    if err.__cause__ is not None:
        texts.append(repr(vars(err.__cause__)))
    texts += [caplog.text, repr(events), repr([r.args for r in caplog.records])]
    for text in texts:
        assert KEY not in text
    assert any("**********" in t for t in texts) == (answers[0] in (echo_key, fail_quoting_key))


def test_the_cdn_never_sees_the_key(client: CloreClient, cdn: FakeServer) -> None:
    cdn.on("prod_x_1.json", httpx.Response(200, content=b"{}"))
    client.fetch_snapshot(f"{CDN}/prod_x_1.json")
    (seen,) = cdn.seen
    assert "auth" not in seen.headers and "authorization" not in seen.headers
    assert KEY not in repr(seen.headers.raw)


def test_the_key_is_not_in_the_client_repr(client: CloreClient) -> None:
    assert repr(client) == "CloreClient(base_url='https://api.clore.ai/v1', key=set)"
    assert KEY not in repr(vars(client))


def test_a_key_unfit_for_a_header_is_refused_without_quoting_it(clock: ManualClock) -> None:
    with pytest.raises(ValueError) as caught:
        CloreClient("Secret Key\n", clock=clock)
    assert "Secret" not in str(caught.value)
    assert CloreClient(f"  {KEY}\n", clock=clock).has_key  # surrounding whitespace is trimmed


@pytest.fixture
def loopback() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1, so httpx and httpcore log as they do in production."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            received.append(self.headers["auth"])
            body = json.dumps(fixture("wallets.json")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_http_library_debug_logs_hold_no_key(
    loopback: tuple[str, list[str]], clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    base_url, received = loopback
    with caplog.at_level(logging.DEBUG):
        with CloreClient(KEY, clock=clock, base_url=base_url, timeout=10) as client:
            assert client.wallets().wallets[0].name == "bitcoin"
    assert received == [KEY]
    loggers = {r.name for r in caplog.records}
    assert {"httpx", "httpcore.http11", "bidder.api.client"} <= loggers
    assert KEY not in caplog.text
    assert KEY not in repr([r.args for r in caplog.records])

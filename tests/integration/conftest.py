"""Fixtures of the client-against-sim tests: the real ``CloreClient`` talking to an in-process
``SimMarket`` through its transport, both on one ``ManualClock`` (the client's rate limiter sleeps
by moving it, so nothing waits for real). Every test also checks that the key never reached a log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from bidder.api import CallEvent, CloreClient
from bidder.clock import ManualClock
from bidder.sim import SimMarket, SimOptions
from integration_helpers import BASE_URL, KEY, START


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        assert KEY not in record.getMessage() and KEY not in (record.exc_text or ""), record


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def options() -> SimOptions:
    """A quiet market (nothing moves unless the test moves it); tests override this fixture."""
    return SimOptions.quiet(spot_servers=12, gigaspot_machines=16)


@pytest.fixture
def market(options: SimOptions, clock: ManualClock) -> SimMarket:
    return SimMarket(options, clock)


@pytest.fixture
def events() -> list[CallEvent]:
    return []


@pytest.fixture
def make_client(market: SimMarket, clock: ManualClock,
                events: list[CallEvent]) -> Iterator[Callable[..., CloreClient]]:
    """``make_client(key=KEY, **client_kwargs)``: clients of ``market``, closed after the test."""
    with ExitStack() as clients:

        def make(key: str = KEY, **kwargs: Any) -> CloreClient:
            transport = market.transport()
            settings = {"clock": clock, "base_url": BASE_URL, "transport": transport,
                        "cdn_transport": transport, "observer": events.append, **kwargs}
            return clients.enter_context(CloreClient(key, **settings))

        yield make


@pytest.fixture
def client(make_client: Callable[..., CloreClient]) -> CloreClient:
    return make_client()

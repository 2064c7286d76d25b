"""Fixtures for the API client tests; the fakes themselves live in ``api_fakes``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from api_fakes import KEY, T0, FakeServer
from bidder.api import CallEvent, CloreClient
from bidder.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def server(clock: ManualClock) -> FakeServer:
    return FakeServer(clock)


@pytest.fixture
def cdn(clock: ManualClock) -> FakeServer:
    return FakeServer(clock)


@pytest.fixture
def events() -> list[CallEvent]:
    return []


@pytest.fixture
def make_client(
    clock: ManualClock, server: FakeServer, cdn: FakeServer, events: list[CallEvent]
) -> Iterator[Callable[..., CloreClient]]:
    made: list[CloreClient] = []

    def make(**kwargs: Any) -> CloreClient:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("transport", httpx.MockTransport(server.handler))
        kwargs.setdefault("cdn_transport", httpx.MockTransport(cdn.handler))
        kwargs.setdefault("observer", events.append)
        client = CloreClient(kwargs.pop("api_key", KEY), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., CloreClient]) -> CloreClient:
    return make_client()

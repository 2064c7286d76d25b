"""Fixtures of the poller tests: a quiet simulated market on a manual clock, a real client of it
through a hookable transport, a fresh database, and pollers built from a config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bidder.api import CloreClient
from bidder.clock import ManualClock
from bidder.config import Config, parse_config
from bidder.poller import MarketPoller
from bidder.sim import SimMarket, SimOptions
from poller_helpers import BASE_URL, KEY, START, HookedTransport
from storage.db import Database, open_database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def market(clock: ManualClock) -> SimMarket:
    """Nothing moves unless the test moves it."""
    return SimMarket(SimOptions.quiet(spot_servers=16, gigaspot_machines=10), clock)


@pytest.fixture
def transport(market: SimMarket) -> HookedTransport:
    return HookedTransport(market)


@pytest.fixture
def client(clock: ManualClock, transport: HookedTransport) -> Iterator[CloreClient]:
    with CloreClient(KEY, clock=clock, base_url=BASE_URL, transport=transport,
                     cdn_transport=transport) as made:
        yield made


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    with open_database(db_url, writer=True) as db:
        yield db


@pytest.fixture
def make_poller(client: CloreClient, database: Database,
                clock: ManualClock) -> Callable[..., MarketPoller]:
    """``make_poller(config_dict={...}, **poller_kwargs)``."""

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> MarketPoller:
        cfg = parse_config(config) if config is not None else Config()
        return MarketPoller(client, database.sessions, clock, cfg, **kwargs)

    return make

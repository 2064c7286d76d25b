"""Building a client: where the key comes from, the limits the config sets, a missing key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api_fakes import CDN, FakeServer, fixture
from bidder.api import CloreClient, DatabaseError, MissingApiKey
from bidder.clock import ManualClock
from bidder.config import ApiConfig


def test_no_key_means_nothing_is_sent_to_the_api(
    make_client: Callable[..., CloreClient], server: FakeServer, cdn: FakeServer
) -> None:
    client = make_client(api_key=None)
    assert not client.has_key
    with pytest.raises(MissingApiKey, match="wallets: no API key: set CLORE_API_KEY"):
        client.wallets()
    assert server.seen == []
    cdn.on("s_1.json", httpx.Response(200, content=b"{}"))
    assert client.fetch_snapshot(f"{CDN}/s_1.json") == b"{}"


def test_from_config_takes_the_config_key_then_the_environment(
    clock: ManualClock, server: FakeServer
) -> None:
    transport = httpx.MockTransport(server.handler)
    server.on("wallets", *[fixture("wallets.json")] * 2)
    env = {"CLORE_API_KEY": "FromEnvironment123"}
    configured = ApiConfig(key="FromConfig123")
    with CloreClient.from_config(configured, clock=clock, transport=transport, environ=env) as c:
        c.wallets()
    with CloreClient.from_config(ApiConfig(), clock=clock, transport=transport, environ=env) as c:
        c.wallets()
    with CloreClient.from_config(ApiConfig(), clock=clock, transport=transport, environ={}) as c:
        assert not c.has_key
    assert [s.headers["auth"] for s in server.seen] == ["FromConfig123", "FromEnvironment123"]


def test_from_config_uses_its_intervals_and_retries(clock: ManualClock, server: FakeServer) -> None:
    api = ApiConfig(key="K123", min_interval=2.5, max_retries=1)
    server.on("wallets", fixture("wallets.json"), {"code": 1}, {"code": 1})
    transport = httpx.MockTransport(server.handler)
    with CloreClient.from_config(api, clock=clock, transport=transport) as c:
        c.wallets()
        with pytest.raises(DatabaseError):
            c.wallets()
    assert server.times() == [0.0, 2.5, 5.0]


def test_from_config_with_a_state_dir_shares_a_file_named_by_a_hash(
    clock: ManualClock, server: FakeServer, tmp_path: Path
) -> None:
    server.on("wallets", fixture("wallets.json"))
    api = ApiConfig(key="SecretKey123")
    transport = httpx.MockTransport(server.handler)
    with CloreClient.from_config(api, clock=clock, transport=transport, state_dir=tmp_path) as c:
        c.wallets()
    state_file, lock_file = sorted(tmp_path.iterdir())  # the record and the lock beside it
    assert state_file.name.startswith("ratelimit-") and "SecretKey123" not in state_file.name
    assert lock_file.name == state_file.name + ".lock"
    with pytest.raises(ValueError, match="not both"):
        CloreClient.from_config(api, clock=clock, state_dir=tmp_path, limiter=c.limiter)


@pytest.mark.parametrize(("timeout", "max_retries"), [(0.0, 4), (30.0, -1)])
def test_nonsense_settings_are_refused(
    clock: ManualClock, timeout: float, max_retries: int
) -> None:
    with pytest.raises(ValueError, match="timeout must be positive|max_retries must be 0 or more"):
        CloreClient("K", clock=clock, timeout=timeout, max_retries=max_retries)

"""Record the built-in simulated market into a database, minute by minute, on a manual clock.

History to backtest on without a live recorder: the README's worked example, the tests and the
CLI's demos use it. It reads the market through its public API the way a recorder would (one
``get_gigaspot`` and the CDN file per minute, a few ``spot_marketplace`` polls round robin, a
``marketplace`` listing every hour), keeping to the rate limits by moving the clock.
"""

from __future__ import annotations

import re

import httpx

from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
from bidder.clock import ManualClock
from bidder.sim.market import SimMarket
from bidder.sim.options import SimOptions
from storage.db import Database
from storage.gigaspot_ingest import SnapshotIngester
from storage.spot_record import record_marketplace, record_spot_poll

KEY = "recorder"
REQUEST_GAP = 1.05
"""Seconds between two requests (the limit is one per second)."""
_TIME_IN_URL = re.compile(r"_(\d+)\.json$")


def record_sim(database: Database, options: SimOptions, *, start: float, minutes: int,
               spot_polls_per_minute: int = 10, listing_every: int = 60) -> SimMarket:
    """Run a ``SimMarket`` from ``start`` for ``minutes`` and record what a recorder would see."""
    clock = ManualClock(start)
    market = SimMarket(options, clock)
    api = httpx.Client(transport=market.transport(), base_url="http://sim.test/v1",
                       headers={"auth": KEY})
    cdn = httpx.Client(transport=market.transport())
    ingester = SnapshotIngester(database.sessions)
    servers = sorted(market.world.servers)
    next_server = 0
    for minute in range(minutes):
        clock.set(start + 60.0 * minute)
        if minute % listing_every == 0 and servers:
            reply = MarketplaceReply.model_validate(api.get("marketplace").json())
            with database.sessions.begin() as session:
                record_marketplace(session, clock.now(), reply)
            clock.advance(REQUEST_GAP)
        info = api.get("get_gigaspot").json()
        clock.advance(REQUEST_GAP)
        url = info["v1_snapshot_url"]
        raw = cdn.get(url).content
        ingester.ingest(raw, snapshot_time=int(_TIME_IN_URL.search(url).group(1)),  # type: ignore[union-attr]
                        fetched_at=clock.now(), source=url, url=url,
                        clore_price=info["clore_price"], creation_fees=info["creation_fees"],
                        my_user_id=info["my_user_id"])
        for _ in range(min(spot_polls_per_minute, len(servers))):
            server_id = servers[next_server % len(servers)]
            next_server += 1
            reply = SpotMarketplaceReply.model_validate(
                api.get("spot_marketplace", params={"market": server_id}).json())
            with database.sessions.begin() as session:
                record_spot_poll(session, server_id, clock.now(), reply)
            clock.advance(REQUEST_GAP)
    return market

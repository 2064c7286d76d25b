"""A simulated day of a busy default market with a polling client takes seconds, not minutes."""

from __future__ import annotations

import time

from bidder.sim import SimMarket, SimOptions
from sim_helpers import Trader

DAY = 86400


def test_a_simulated_day_with_thousands_of_requests_runs_in_seconds(clock):
    started = time.perf_counter()
    market = SimMarket(SimOptions(), clock)
    trader = Trader(market, clock)
    servers = list(market.world.servers)
    snapshots = set()
    for step in range(DAY // 10):
        clock.advance(10)
        if step % 6 == 0:  # fetched as a bot would; parsing left out, it is the client's cost
            url = trader.get("get_gigaspot")["v1_snapshot_url"]
            assert trader.cdn.get(url).status_code == 200
            snapshots.add(url)
        else:
            trader.get("spot_marketplace", market=servers[step % len(servers)])
    elapsed = time.perf_counter() - started
    assert market.stats[trader.key].codes == {0: DAY // 10}
    assert len(snapshots) > 1000  # the market kept moving all day
    assert elapsed < 60, f"a simulated day took {elapsed:.1f} s"

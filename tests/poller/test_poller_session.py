"""A recording session: the recorder's three jobs run on a manual clock against a lively simulated
market (competitors, outages, price drift) for two simulated hours, as the scheduler would run them."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from bidder.api import CloreClient
from bidder.config import Config
from bidder.poller import MarketPoller
from bidder.sim import SimMarket, SimOptions
from poller_helpers import BASE_URL, KEY, HookedTransport, run_like_scheduler
from storage.models import GigaspotSnapshot, MarketplaceListing, SpotPoll

HOURS = 2


@pytest.fixture
def lively(clock) -> SimMarket:
    return SimMarket(SimOptions(spot_servers=24, gigaspot_machines=30, spot_agents=10,
                                gigaspot_agents=20), clock)


def test_two_hours_of_recording(lively, clock, database):
    transport = HookedTransport(lively)
    client = CloreClient(KEY, clock=clock, base_url=BASE_URL, transport=transport,
                         cdn_transport=transport)
    public = sorted(s.id for s in lively.world.servers.values() if s.visibility == "public")
    own = [public[5]]
    poller = MarketPoller(client, database.sessions, clock, Config(), own_servers=lambda: own,
                          watch_all_spot=True)
    listings: list[set[int]] = []
    """The servers each listing showed (the simulated marketplace lists public, online ones)."""

    def marketplace():
        result = poller.poll_marketplace()
        listings.append({s.id for s in lively.world.servers.values()
                         if s.visibility == "public" and s.online})
        if len(listings) == 2:
            own.append(public[9])  # we placed a second order
        return result

    def spot_round():
        return len(listings), list(own), poller.poll_spot_round()

    start = clock.now()
    runs = run_like_scheduler(clock, [("marketplace", marketplace, 3600.0),
                                      ("gigaspot", poller.poll_gigaspot, 60.0),
                                      ("spot", spot_round, 30.0)],
                              until=start + HOURS * 3600)
    by_job = Counter(name for name, _, _ in runs)
    assert by_job["marketplace"] == HOURS + 1
    assert by_job["gigaspot"] >= HOURS * 60 * 0.9 and by_job["spot"] >= HOURS * 120 * 0.9

    gigaspot = [result for name, _, result in runs if name == "gigaspot"]
    assert {r.outcome for r in gigaspot} == {"recorded", "unchanged"}
    recorded = [r.url for r in gigaspot if r.outcome == "recorded"]
    seen_in_order = [r.url for i, r in enumerate(gigaspot)
                     if i == 0 or r.url != gigaspot[i - 1].url]
    assert recorded == seen_in_order  # a snapshot is recorded exactly when the URL changes
    assert len(recorded) > 20  # the market moved
    assert lively.cdn_stats.fetches == len(recorded)
    assert lively.cdn_stats.with_auth_header == 0

    rounds = [result for name, _, result in runs if name == "spot"]
    assert all(r.error is None and not r.failed and len(r.polled) == 10 for _, _, r in rounds)
    assert all(list(r.polled[: len(mine)]) == mine for _, mine, r in rounds)
    assert listings[0] != listings[1]  # servers went offline or came back
    for period, listed in enumerate(listings[:-1], start=1):  # the last one came at the end
        mine = next(m for p, m, _ in rounds if p == period)
        polls = Counter(s for p, m, r in rounds if p == period for s in r.polled[len(m):])
        assert set(polls) == listed - set(mine)
        assert max(polls.values()) - min(polls.values()) <= 1  # in turn, nobody left behind

    with database.sessions() as session:
        assert session.scalars(select(GigaspotSnapshot.url).order_by(GigaspotSnapshot.id)
                               ).all() == recorded
        assert session.scalar(select(func.count()).select_from(SpotPoll)) == sum(
            len(r.polled) for _, _, r in rounds)
        assert session.scalar(select(func.count()).select_from(MarketplaceListing)) == HOURS + 1
    assert lively.stats[KEY].codes[5] == 0

"""Spot candidates from the recorded listing (matched like the bot's view), and the round robin
that takes them in turn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bidder.config import PollerConfig, TargetConfig
from bidder.sim.world import CLORE, USD
from bidder.watchlist import RoundRobin, listing_frame, target_candidates, watch_round_complete


def target(**fields):
    return TargetConfig(**{"name": "t", "market": "spot", "count": 1,
                           "max_price_per_gpu_day": 1e6, **fields})


def expected(market, *, gpu_model="", min_gpus=1, max_gpus=None, countries=(), min_reliability=0.0,
             exclude=(), currency=CLORE, cap=math.inf):
    """The matching servers, worked out from the simulated world itself."""
    return sorted(
        s.id for s in market.world.servers.values()
        if s.visibility == "public" and s.online and not s.rented
        and gpu_model.lower() in s.gpu.name.lower() and s.gpus >= min_gpus
        and (max_gpus is None or s.gpus <= max_gpus)
        and (not countries or s.specs["net"]["cc"] in countries)
        and s.reliability >= min_reliability and s.id not in exclude
        and currency in s.floors and s.floors[currency] <= cap * s.gpus)


def candidates(database, spec):
    with database.sessions() as session:
        return target_candidates(listing_frame(session), spec)


MATCHES = {
    "model substring": ({"gpu_model": "RTX 30"}, {"gpu_model": "RTX 30"}),
    "model any case": ({"gpu_model": "rtx 3080"}, {"gpu_model": "RTX 3080"}),
    "GPUs per server": ({"min_gpus_per_server": 2, "max_gpus_per_server": 4},
                        {"min_gpus": 2, "max_gpus": 4}),
    "countries": ({"countries": ["nl", "PL"]}, {"countries": ("NL", "PL")}),
    "reliability": ({"min_reliability": 0.9}, {"min_reliability": 0.9}),
    "order currency": ({"currency": USD}, {"currency": USD}),
    "cap in the order currency": ({"max_price_per_gpu_day": 40.0}, {"cap": 40.0}),
}


@pytest.mark.parametrize("case", MATCHES)
def test_candidates_match_the_target_like_the_view(case, make_poller, market, database):
    fields, wanted = MATCHES[case]
    make_poller().poll_marketplace()
    found = candidates(database, target(**fields))
    assert found == expected(market, **wanted)
    assert 0 < len(found) < len(expected(market))


def test_excluded_rented_and_unlisted_servers_are_not_candidates(make_poller, market, database):
    everything = expected(market)
    excluded, rented, offline = everything[0], everything[1], everything[2]
    market.set_rented(rented, True)
    market.set_online(offline, False)
    make_poller().poll_marketplace()
    found = candidates(database, target(exclude_servers=[excluded]))
    assert found == [s for s in everything if s not in (excluded, rented, offline)]


def test_a_usd_cap_applies_once_rates_are_recorded(make_poller, market, database):
    poller = make_poller(own_servers=lambda: [expected(market)[0]])
    poller.poll_marketplace()
    usd_cap = target(max_price_per_gpu_day=1.5, cap_currency="USD")
    assert candidates(database, usd_cap) == expected(market)  # no rate yet: the cap excludes nothing

    poller.poll_spot_round()  # spot polls record currency_rates_in_usd
    cap_in_clore = 1.5 / market.exchange.clore_usd
    assert candidates(database, usd_cap) == expected(market, cap=cap_in_clore)
    assert candidates(database, usd_cap) != expected(market)


def test_no_listing_no_frame(database):
    with database.sessions() as session:
        assert listing_frame(session) is None


def test_round_robin_wraps_around_one_group():
    rr = RoundRobin()
    assert [rr.take({"a": [3, 1, 2]}, 2) for _ in range(3)] == [[1, 2], [3, 1], [2, 3]]


def test_round_robin_interleaves_groups_and_rotates_who_starts():
    rr = RoundRobin()
    groups = {"a": [1, 2, 3], "b": [10, 20]}
    assert rr.take(groups, 3) == [1, 10, 2]
    assert rr.take(groups, 3) == [20, 3, 10]


def test_round_robin_gives_each_server_once_per_call():
    rr = RoundRobin()
    assert rr.take({"a": [1, 2], "b": [2, 3]}, 10) == [1, 2, 3]
    assert rr.take({"a": [1, 2, 3]}, 10, skip={2}) == [3, 1]


def test_skipped_servers_count_as_given():
    rr = RoundRobin()
    assert rr.take({"a": [1, 2, 3, 4]}, 2, skip={1}) == [2, 3]
    assert rr.take({"a": [1, 2, 3, 4]}, 2) == [4, 1]


def test_round_robin_goes_on_after_the_last_id_when_the_list_changes():
    rr = RoundRobin()
    assert rr.take({"a": [1, 2, 3, 4]}, 2) == [1, 2]
    assert rr.take({"a": [1, 3, 4, 5]}, 2) == [3, 4]
    assert rr.take({"a": [1, 2, 5, 6]}, 3) == [5, 6, 1]


def test_round_robin_with_no_slots_or_no_servers():
    rr = RoundRobin()
    assert rr.take({"a": [1, 2]}, 0) == []
    assert rr.take({"a": []}, 3) == []
    assert rr.take({}, 3) == []


def test_a_watch_list_round_is_complete_when_every_candidate_was_polled_since_the_start():
    poller = PollerConfig(spot_interval=30.0, spot_polls_per_round=2)
    since = 1000.0
    ids = np.array([5, 6, 7, 8])
    before = np.array([1010.0, 990.0, np.nan, 1020.0])  # 6 only before the start, 7 never

    def done(polled_at, now=1100.0, candidates=(5, 6, 7)):
        return watch_round_complete(list(candidates), ids, polled_at, since=since, now=now,
                                    poller=poller)

    assert not done(before)
    assert done(np.array([1010.0, 1050.0, 1080.0, np.nan]))  # 8 is no candidate
    assert done(before, candidates=(5, 8))
    # nothing listed (yet): nothing to wait for now, and no round done either (asked again)
    assert done(before, candidates=()) is None
    # a candidate that cannot be polled holds the target back at most two rounds' time:
    # ceil(3 / 2) + 1 = 3 rounds of 30 s, twice
    assert not done(before, now=since + 179.0) and done(before, now=since + 180.0)

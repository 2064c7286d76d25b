"""``poll_spot_round`` and ``poll_marketplace`` against the simulated market: our servers first,
every round; candidates in turn; the listing refreshed; failures of one server or of the API."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from bidder.sim.world import CLORE
from poller_helpers import KEY, api_reply_hook, endpoint
from storage.market_views import spot_frame
from storage.models import MarketplaceListing, SpotPoll


def polled_servers(database):
    """Server ids of the recorded spot polls, in the order they were made."""
    with database.sessions() as session:
        return list(session.scalars(select(SpotPoll.server_id).order_by(SpotPoll.id)))


def listed(market, word=""):
    return sorted(s.id for s in market.world.servers.values()
                  if s.visibility == "public" and s.online and not s.rented
                  and word in s.gpu.name)


def spot_target(name, gpu_model):
    return {"name": name, "market": "spot", "gpu_model": gpu_model, "count": 1,
            "max_price_per_gpu_day": 1e6}


def config(*targets, per_round=4):
    return {"poller": {"spot_polls_per_round": per_round}, "targets": list(targets)}


def test_own_servers_first_every_round_then_every_candidate_in_turn(make_poller, market, clock,
                                                                    database):
    rtx30 = listed(market, "RTX 30")
    own = [listed(market, "GTX 1660")[0], rtx30[0]]
    poller = make_poller(config(spot_target("rtx30", "RTX 30")), own_servers=lambda: own)
    poller.poll_marketplace()
    others = [s for s in rtx30 if s not in own]
    rounds = -(-len(others) // 2) * 3  # every candidate three times over (2 slots per round)
    for _ in range(rounds):
        clock.advance(30)
        result = poller.poll_spot_round()
        assert result.polled == result.planned and len(result.planned) == 4
        assert list(result.planned[:2]) == own

    polls = polled_servers(database)
    assert len(polls) == 4 * rounds
    rounds_of = [polls[i:i + 4] for i in range(0, len(polls), 4)]
    assert all(r[:2] == own for r in rounds_of)
    candidate_polls = Counter(s for r in rounds_of for s in r[2:])
    assert set(candidate_polls) == set(others)
    assert max(candidate_polls.values()) - min(candidate_polls.values()) <= 1
    in_order = [s for r in rounds_of for s in r[2:]]
    assert sorted(in_order[: len(others)]) == others  # each candidate once before any twice


def test_targets_take_turns(make_poller, market):
    rtx4090, gtx1660 = listed(market, "RTX 4090"), listed(market, "GTX 1660")
    poller = make_poller(config(spot_target("a", "RTX 4090"), spot_target("b", "GTX 1660"),
                                per_round=2))
    poller.poll_marketplace()
    rounds = [poller.poll_spot_round().polled for _ in range(4)]
    assert all(len(set(r) & set(rtx4090)) == 1 and len(set(r) & set(gtx1660)) == 1
               for r in rounds)


def test_a_poll_records_the_server_and_its_offers(make_poller, market, database):
    server_id = listed(market)[0]
    floor = market.server(server_id).floors[CLORE]
    rival = market.place_rival(server_id, floor * 1.2)
    make_poller(own_servers=lambda: [server_id]).poll_spot_round()
    with database.sessions() as session:
        frame = spot_frame(session)
    row = frame.row(server_id)
    bids = frame.bids_of(row)
    assert frame.bid_id[bids].tolist() == [rival.id]
    assert frame.bid_price[bids].tolist() == [pytest.approx(floor * 1.2)]
    assert frame.bid_active[bids].tolist() == [True]
    assert frame.floor(CLORE)[row] == pytest.approx(floor)


def test_no_listing_yet_polls_only_our_servers(make_poller, market):
    own = listed(market)[:1]
    poller = make_poller(config(spot_target("any", "")), own_servers=lambda: own)
    assert poller.poll_spot_round().polled == tuple(own)


def test_more_own_servers_than_slots_take_turns(make_poller, market):
    own = listed(market)[:6]
    poller = make_poller(config(per_round=4), own_servers=lambda: own)
    first, second = poller.poll_spot_round().polled, poller.poll_spot_round().polled
    assert len(first) == len(second) == 4
    assert set(first) | set(second) == set(own)


def test_the_refreshed_listing_changes_the_candidates(make_poller, market, clock, database):
    everything = listed(market)
    poller = make_poller(config(per_round=len(everything)), watch_all_spot=True)
    first = poller.poll_marketplace()
    first_at = clock.now()
    assert first.listing.servers == len(everything)
    assert sorted(poller.poll_spot_round().polled) == everything

    gone = everything[3]
    market.set_online(gone, False)
    clock.advance(3600)
    second = poller.poll_marketplace()
    second_at = clock.now()
    assert (second.listing.servers, second.listing.closed) == (len(everything) - 1, 1)
    assert sorted(poller.poll_spot_round().polled) == [s for s in everything if s != gone]
    with database.sessions() as session:
        assert session.scalars(select(MarketplaceListing.taken_at)).all() == [first_at, second_at]


def test_one_servers_failure_is_logged_and_the_round_goes_on(make_poller, market, transport,
                                                             database, caplog):
    own = listed(market)[:3]
    transport.hook = api_reply_hook({("spot_marketplace", str(own[1])):
                                     {"code": 2, "error": "market: unknown"}})
    poller = make_poller(own_servers=lambda: own)
    with caplog.at_level(logging.WARNING, logger="bidder.poller"):
        result = poller.poll_spot_round()
    assert (result.polled, result.failed, result.error) == ((own[0], own[2]), (own[1],), None)
    [message] = [r.getMessage() for r in caplog.records]
    assert str(own[1]) in message and "code 2" in message
    assert polled_servers(database) == [own[0], own[2]]


def test_an_api_fault_ends_the_round_and_the_next_round_tries_again(make_poller, market,
                                                                    transport, database, caplog):
    own = listed(market)[:3]
    transport.hook = api_reply_hook({("spot_marketplace", str(own[1])): {"code": 3}})
    poller = make_poller(own_servers=lambda: own)
    with caplog.at_level(logging.ERROR, logger="bidder.poller"):
        result = poller.poll_spot_round()
    assert result.polled == (own[0],) and "code 3" in result.error
    [message] = [r.getMessage() for r in caplog.records]
    assert str(own[1]) in message and "1 of 3 polled" in message
    transport.hook = None
    assert poller.poll_spot_round().polled == tuple(own)


def test_stop_ends_the_round_after_the_call_in_flight(make_poller, market, transport, database):
    own = listed(market)[:4]
    stop = threading.Event()
    calls = Counter()

    def stop_on_second(request, answer):
        response = answer()
        calls[endpoint(request)] += 1
        if calls["spot_marketplace"] == 2:
            stop.set()
        return response

    transport.hook = stop_on_second
    result = make_poller(own_servers=lambda: own, stop=stop).poll_spot_round()
    assert result.stopped and result.polled == tuple(own[:2])
    assert polled_servers(database) == own[:2]


def test_a_failed_marketplace_poll_is_logged_and_records_nothing(make_poller, transport, database,
                                                                 caplog):
    transport.hook = lambda request, answer: httpx.Response(502, text="bad gateway")
    poller = make_poller()
    poller._client._max_retries = 0  # no retries of the 502: one attempt, one log line
    with caplog.at_level(logging.ERROR, logger="bidder.poller"):
        result = poller.poll_marketplace()
    assert result.listing is None and "HTTP 502" in result.error
    [message] = [r.getMessage() for r in caplog.records if r.name == "bidder.poller"]
    assert "marketplace" in message and KEY not in message
    with database.sessions() as session:
        assert session.scalars(select(MarketplaceListing.id)).all() == []

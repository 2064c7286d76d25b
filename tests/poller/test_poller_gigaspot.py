"""``MarketPoller.poll_gigaspot`` against the simulated market: the CDN file is fetched only for a
new URL, bad snapshots and CDN 404s are logged and lose nothing, recording goes on afterwards."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest
from sqlalchemy import func, select

from bidder.sim.world import CLORE
from poller_helpers import KEY, cdn_hook, edit_machine, endpoint
from storage.gigaspot_parse import snapshot_time_from_url
from storage.market_views import gigaspot_frame
from storage.models import GigaspotBid, GigaspotSnapshot


def rentable_machine(market, index=0):
    return [m for m in market.world.machines.values() if m.rentable][index]


def change_market(market, clock, index=0):
    """A rival bid on a machine: the next snapshot differs. Moves the clock so that the next
    snapshot has a time of its own."""
    clock.advance(60)
    machine = rentable_machine(market, index)
    return market.place_rival(machine.id, machine.min_bid * 1.5)


def snapshots(database):
    with database.sessions() as session:
        return session.execute(select(GigaspotSnapshot.time, GigaspotSnapshot.url,
                                      GigaspotSnapshot.my_user_id, GigaspotSnapshot.clore_price,
                                      GigaspotSnapshot.creation_fees)
                               .order_by(GigaspotSnapshot.id)).all()


def bid_rows(database):
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(GigaspotBid))


def test_records_a_snapshot_only_when_the_url_changes(make_poller, market, clock, database):
    poller = make_poller()
    assert poller.my_user_id is None

    first = poller.poll_gigaspot()
    assert first.outcome == "recorded"
    assert first.snapshot_time == snapshot_time_from_url(first.url)
    assert first.ingest.machines == len(market.world.machines)
    assert poller.my_user_id == market.user_id(KEY)
    assert market.cdn_stats.fetches == 1

    clock.advance(60)
    again = poller.poll_gigaspot()
    assert (again.outcome, again.url) == ("unchanged", first.url)
    assert market.cdn_stats.fetches == 1  # same URL: no download

    rival = change_market(market, clock)
    changed = poller.poll_gigaspot()
    assert changed.outcome == "recorded" and changed.url != first.url
    assert changed.ingest.new_bids == 1
    assert market.cdn_stats.fetches == 2
    assert market.cdn_stats.with_auth_header == 0

    rows = snapshots(database)
    assert [r.url for r in rows] == [first.url, changed.url]
    assert [r.time for r in rows] == [first.snapshot_time, changed.snapshot_time]
    assert all(r.my_user_id == market.user_id(KEY) for r in rows)
    assert rows[-1].clore_price == pytest.approx(market.exchange.clore_usd)
    assert rows[-1].creation_fees == {CLORE: market.options.creation_fee_clore}
    with database.sessions() as session:
        frame = gigaspot_frame(session)
    assert rival.id in frame.bid_id.tolist()


def test_after_a_restart_a_recorded_snapshot_is_not_downloaded_again(make_poller, market):
    assert make_poller().poll_gigaspot().outcome == "recorded"
    restarted = make_poller()
    result = restarted.poll_gigaspot()
    assert result.outcome == "already_recorded"
    assert market.cdn_stats.fetches == 1
    assert restarted.my_user_id == market.user_id(KEY)


BAD_SNAPSHOTS = {
    # case: (the edit of the CDN file, given the spoilt machine's id; the field named; words)
    "malformed": (lambda machine_id: lambda raw: b'{"1": nope}', None, "not valid JSON"),
    "truncated": (lambda machine_id: lambda raw: raw[: len(raw) // 2], None, "truncated"),
    "missing field": (lambda machine_id: edit_machine(machine_id, lambda m: m.pop("min_bid")),
                      "min_bid", "Field required"),
    "mistyped field": (lambda machine_id: edit_machine(
        machine_id, lambda m: m.update(reliability="high")), "reliability", "valid number"),
}


@pytest.mark.parametrize("case", BAD_SNAPSHOTS)
def test_a_bad_snapshot_is_rejected_named_and_loses_nothing(case, make_poller, market, clock,
                                                            database, transport, caplog):
    poller = make_poller()
    good = poller.poll_gigaspot()
    with database.sessions() as session:
        before = gigaspot_frame(session)
    rows_before = bid_rows(database)

    make_edit, field, words = BAD_SNAPSHOTS[case]
    machine = rentable_machine(market, 1)
    edit = make_edit(machine.id)
    change_market(market, clock)
    transport.hook = cdn_hook(edit)
    with caplog.at_level(logging.ERROR, logger="bidder.poller"):
        bad = poller.poll_gigaspot()

    assert bad.outcome == "rejected" and bad.url != good.url
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert bad.url in errors[0] and words in errors[0]
    if field is not None:
        assert f"machine {machine.id}" in errors[0] and field in errors[0]
    assert [r.url for r in snapshots(database)] == [good.url]
    assert bid_rows(database) == rows_before
    with database.sessions() as session:
        after = gigaspot_frame(session)
    assert after.time == before.time and after.bid_id.tolist() == before.bid_id.tolist()

    fetches = market.cdn_stats.fetches
    clock.advance(60)
    assert poller.poll_gigaspot().outcome == "unchanged"  # the same bad file is not fetched again
    assert market.cdn_stats.fetches == fetches

    transport.hook = None
    change_market(market, clock, index=2)
    later = poller.poll_gigaspot()
    assert later.outcome == "recorded"
    assert [r.url for r in snapshots(database)] == [good.url, later.url]


def test_a_cdn_404_asks_get_gigaspot_again_and_then_records(make_poller, market, clock, database,
                                                            transport, caplog):
    poller = make_poller()
    transport.hook = cdn_hook(status=404)
    with caplog.at_level(logging.ERROR, logger="bidder.poller"):
        missing = poller.poll_gigaspot()
    assert missing.outcome == "not_found"
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert missing.url in message and "404" in message
    assert snapshots(database) == []

    transport.hook = None
    asked = market.stats[KEY].requests["get_gigaspot"]
    clock.advance(60)
    found = poller.poll_gigaspot()
    assert market.stats[KEY].requests["get_gigaspot"] == asked + 1
    assert (found.outcome, found.url) == ("recorded", missing.url)
    assert [r.url for r in snapshots(database)] == [missing.url]


def test_an_api_failure_is_one_log_line_and_the_next_poll_recovers(make_poller, market, transport,
                                                                   clock, caplog):
    poller = make_poller()
    transport.hook = lambda request, answer: httpx.Response(200, json={"code": 3})
    with caplog.at_level(logging.ERROR, logger="bidder.poller"):
        result = poller.poll_gigaspot()
    assert result.outcome == "failed"
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "get_gigaspot" in message and "code 3" in message and KEY not in message
    transport.hook = None
    clock.advance(60)
    assert poller.poll_gigaspot().outcome == "recorded"


def test_stop_is_checked_before_each_call(make_poller, market, transport):
    stop = threading.Event()
    poller = make_poller(stop=stop)

    def stop_after_get_gigaspot(request, answer):
        response = answer()
        if endpoint(request) == "get_gigaspot":
            stop.set()
        return response

    transport.hook = stop_after_get_gigaspot
    result = poller.poll_gigaspot()
    assert result.outcome == "stopped" and result.url is not None
    assert market.cdn_stats.fetches == 0

    asked = market.stats[KEY].requests["get_gigaspot"]
    assert poller.poll_gigaspot().outcome == "stopped"
    assert market.stats[KEY].requests["get_gigaspot"] == asked

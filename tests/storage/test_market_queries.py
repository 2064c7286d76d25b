"""Queries on hand-built histories with known answers: history, intervals, frames, spot recording."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sqlalchemy import func, select

from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
from storage.history import (
    bid_intervals,
    fact_intervals,
    machine_history,
    snapshot_times,
    state_intervals,
)
from storage.db import open_database
from storage.market_views import gigaspot_frame, gigaspot_frame_reads, spot_frame
from storage.models import CurrencyRates, MarketplaceServer, SpotOffer
from storage.spot_record import parse_gpu_spec, record_marketplace, record_spot_poll

T0 = 1735176176


@pytest.fixture
def history(record, doc_snapshot, changed, delete):
    """Five snapshots, minute by minute (ids 1..5):

    0: as documented: 40329 has bid 542567 at 0.2
    1: 542567 at 0.3, new bid 600000 (user 7) at 0.25; 35083 reliability 0.98
    2: unchanged
    3: 40329 is not listed
    4: 40329 is back with only 542567, at 0.35
    """
    record(doc_snapshot, 0, clore_price=0.03, my_user_id=7)
    m1 = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3)
    m1["40329"]["bids"].append({"owner": 7, "id": 600000, "active": False, "price": 0.25,
                                "currency": "CLORE-Blockchain", "pl": 300})
    m1 = changed(m1, ("35083", "reliability"), 0.98)
    record(m1, 1, clore_price=0.031)
    record(m1, 2)
    record(changed(m1, ("40329",), delete), 3)
    m4 = changed(m1, ("40329", "bids"), [{**doc_snapshot["40329"]["bids"][0], "price": 0.35}])
    record(m4, 4)


def test_snapshot_times(database, history):
    with database.sessions() as session:
        every = snapshot_times(session)
        middle = snapshot_times(session, T0 + 60, T0 + 180)
    assert every.id.tolist() == [1, 2, 3, 4, 5] and every.id.dtype == np.int64
    assert every.time.tolist() == [T0 + 60 * k for k in range(5)]
    assert np.array_equal(every.clore_usd, [0.03, 0.031, np.nan, np.nan, np.nan], equal_nan=True)
    assert every.my_user_id.tolist() == [7, -1, -1, -1, -1]
    assert middle.id.tolist() == [2, 3, 4] and len(middle) == 3


def test_machine_history(database, history):
    with database.sessions() as session:
        h = machine_history(session, 40329)
    assert h.time.tolist() == [T0, T0 + 60, T0 + 120, T0 + 240]  # not listed at minute 3
    assert h.snapshot_id.tolist() == [1, 2, 3, 5]
    assert h.online.tolist() == [False] * 4 and h.reliability.tolist() == [0.6436] * 4
    assert h.max_rental_length.tolist() == [864000] * 4 and h.min_bid.dtype == np.float64
    assert h.bid_start.tolist() == [0, 1, 3, 5, 6]
    assert h.bid_id.tolist() == [542567, 542567, 600000, 542567, 600000, 542567]
    assert h.bid_price.tolist() == [0.2, 0.3, 0.25, 0.3, 0.25, 0.35]
    assert h.bid_owner.tolist() == [2, 2, 7, 2, 7, 2]
    assert h.bid_active.tolist() == [True, True, False, True, False, True]
    assert h.bid_pl.tolist() == [400.0, 400.0, 300.0, 400.0, 300.0, 400.0]
    assert [h.currencies[c] for c in h.bid_currency] == ["CLORE-Blockchain"] * 6


def test_machine_history_in_a_window_and_of_an_unknown_machine(database, history):
    with database.sessions() as session:
        window = machine_history(session, 35083, start=T0 + 60, end=T0 + 120)
        nothing = machine_history(session, 99)
    assert window.time.tolist() == [T0 + 60, T0 + 120]
    assert window.reliability.tolist() == [0.98, 0.98]
    assert window.bid_start.tolist() == [0, 0, 0] and len(window.bid_id) == 0
    assert len(nothing) == 0 and nothing.bid_start.tolist() == [0]


def test_bid_intervals(database, history):
    with database.sessions() as session:
        every = bid_intervals(session, None, None)
        late = bid_intervals(session, T0 + 120, T0 + 240)
        none = bid_intervals(session, T0 + 180, T0 + 180)
    assert list(zip(every.bid_id.tolist(), every.price.tolist(), every.first.tolist(),
                    every.last.tolist())) == [
        (542567, 0.2, 0, 0), (542567, 0.3, 1, 2), (542567, 0.35, 4, 4), (600000, 0.25, 1, 2)]
    assert every.machine_id.tolist() == [40329] * 4 and every.owner.tolist() == [2, 2, 2, 7]
    assert every.currencies == ("CLORE-Blockchain",) and every.currency.tolist() == [0] * 4
    assert every.currency.dtype == np.int16 and every.active.dtype == bool
    assert late.snapshots.time.tolist() == [T0 + 120, T0 + 180, T0 + 240]
    assert list(zip(late.price.tolist(), late.first.tolist(), late.last.tolist())) == [
        (0.3, 0, 0), (0.35, 2, 2), (0.25, 0, 0)]
    assert len(none) == 0 and len(none.snapshots) == 1


def test_state_and_fact_intervals(database, history):
    with database.sessions() as session:
        states = state_intervals(session, None, None)
        facts = fact_intervals(session, None, None)
        only = state_intervals(session, None, None, machine_ids=[40329])
        before = state_intervals(session, None, T0 - 1)
    assert list(zip(states.machine_id.tolist(), states.reliability.tolist(), states.first.tolist(),
                    states.last.tolist())) == [
        (35083, 0.974, 0, 0), (35083, 0.98, 1, 4), (40329, 0.6436, 0, 2), (40329, 0.6436, 4, 4)]
    assert states.max_rental_length.dtype == np.int64 and states.online.dtype == bool
    assert only.machine_id.tolist() == [40329, 40329]
    assert len(before) == 0 and len(before.snapshots) == 0
    # facts hold through the minute 40329 was away
    assert list(zip(facts.machine_id.tolist(), facts.gpu_count.tolist(), facts.gpu_model.tolist(),
                    facts.country.tolist(), facts.host.tolist(), facts.first.tolist(),
                    facts.last.tolist())) == [
        (35083, 8, "GTX 1660 SUPER", "RU", 2525, 0, 4), (40329, 1, "RTX 4090", "KZ", 1, 0, 4)]
    assert facts.pl_min.tolist() == [70.0, 150.0] and facts.pl_max.tolist() == [90.0, 450.0]


def test_gigaspot_frame_at_a_time(database, history):
    with database.sessions() as session:
        newest = gigaspot_frame(session)
        at_minute_3 = gigaspot_frame(session, at=T0 + 200)
        at_minute_1 = gigaspot_frame(session, at=T0 + 60, my_user_id=7)
        before = gigaspot_frame(session, at=T0 - 1)
    assert newest.time == T0 + 240 and newest.bid_price.tolist() == [0.35]
    assert newest.bid_mine.tolist() == [False]  # no user id recorded with this snapshot
    assert at_minute_3.time == T0 + 180 and at_minute_3.server_id.tolist() == [35083]
    assert at_minute_3.bid_start.tolist() == [0, 0] and at_minute_3.gpus.tolist() == [8]
    assert at_minute_1.clore_usd == 0.031
    assert at_minute_1.bid_start.tolist() == [0, 0, 2]
    assert at_minute_1.bid_id.tolist() == [542567, 600000]
    assert at_minute_1.bid_mine.tolist() == [False, True]
    assert at_minute_1.reliability.tolist() == [0.98, 0.6436]
    assert before.n_servers == 0 and before.time == T0 - 1


def test_the_live_frame_reads_only_the_open_rows_indexes(sqlite_url):
    """Each read of the newest frame is answered from its table's covering index of open rows,
    in its order: a plan that walks the table (SQLite read every bid version through the primary
    key, 10 s at a week of 10,000 machines) fails here instead of slowing every bot cycle."""
    tables = ("gigaspot_machine_state", "gigaspot_machine_facts", "gigaspot_bid")
    with open_database(sqlite_url, writer=True) as db, db.engine.connect() as connection:
        for table, read in zip(tables, gigaspot_frame_reads(1, newest=True)):
            sql = str(read.compile(dialect=connection.dialect))
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
            assert plan == [f"SCAN {table} USING COVERING INDEX ix_{table}_open"]


def test_frames_of_an_empty_database(database):
    with database.sessions() as session:
        assert gigaspot_frame(session).n_servers == 0
        assert spot_frame(session).n_servers == 0
        assert len(bid_intervals(session, None, None)) == 0


def spot_reply(fixture_json, offers=None, **server):
    data = copy.deepcopy(fixture_json("spot_marketplace.json"))
    if offers is not None:
        data["market"]["offers"] = offers
    data["market"]["server"].update(server)
    data["currency_rates_in_usd"] = {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}
    return SpotMarketplaceReply.model_validate(data)


def test_spot_polls_and_frame(database, fixture_json):
    with database.sessions.begin() as session:
        record_spot_poll(session, 6, 1000.0, spot_reply(fixture_json))
        record_spot_poll(session, 6, 1030.0, spot_reply(fixture_json, offers=[
            {"offer_id": 39, "bid": 5e-6, "active": False, "my": True},
            {"offer_id": 44, "bid": 6e-6, "active": True, "my": False}],
            min_pricing={"bitcoin": 2e-6, "CLORE-Blockchain": 40.0}))
        record_spot_poll(session, 7, 1010.0, SpotMarketplaceReply.model_validate(
            {"code": 0, "exists": False}))
        record_spot_poll(session, 8, 1020.0, spot_reply(fixture_json, visibility="hidden"))
        record_marketplace(session, 900.0, MarketplaceReply.model_validate(
            fixture_json("marketplace.json")))

    with database.sessions() as session:
        frame = spot_frame(session)
        earlier = spot_frame(session, at=1025.0)
        recent_only = spot_frame(session, max_age=15.0)
    assert frame.market == "spot" and frame.time == 1030.0
    assert frame.server_id.tolist() == [6, 7, 8]
    assert frame.observed_at.tolist() == [1030.0, 1010.0, 1020.0]
    assert frame.gpus.tolist() == [1, 0, 0]
    assert frame.gpu_model.tolist() == ["NVIDIA GeForce GTX 1080 Ti", "", ""]
    assert frame.country.tolist() == ["CZ", "", ""]
    assert np.isnan(frame.reliability).all()
    assert frame.online.tolist() == [True, False, True]
    assert frame.rentable.tolist() == [True, False, False]
    assert frame.floor("bitcoin").tolist()[0::2] == [2e-6, 1e-6] and np.isnan(frame.floor("bitcoin")[1])
    assert np.array_equal(frame.floor("CLORE-Blockchain"), [40.0, np.nan, np.nan], equal_nan=True)
    assert frame.bid_start.tolist() == [0, 2, 2, 3]
    assert frame.bid_id.tolist() == [39, 44, 39] and frame.bid_owner.tolist() == [-1, -1, -1]
    assert frame.bid_price.tolist() == [5e-6, 6e-6, 4.2e-6]
    assert frame.bid_active.tolist() == [False, True, True]
    assert frame.bid_mine.tolist() == [True, False, True]
    assert np.isnan(frame.bid_pl).all() and np.isnan(frame.energy_price).all()
    assert frame.rates_usd == {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}
    assert frame.clore_usd == 0.03 and frame.usd_rate("bitcoin") == 60000.0

    assert earlier.time == 1020.0 and earlier.bid_price.tolist()[:1] == [4.2e-6]
    assert recent_only.server_id.tolist() == [6, 8]


def test_offer_currencies_and_rates_inside_market_are_recorded(database, fixture_json):
    data = copy.deepcopy(fixture_json("spot_marketplace.json"))
    data["market"]["offers"] = [
        {"offer_id": 39, "bid": 30.0, "active": False, "my": True},
        {"offer_id": 44, "bid": 1e-4, "active": True, "my": False, "currency": "bitcoin"},
        {"offer_id": 45, "bid": 2.0, "active": False, "my": False, "currency": "DOGE"}]
    data["market"]["currency_rates_in_usd"] = {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}
    with database.sessions.begin() as session:
        record_spot_poll(session, 6, 1000.0, SpotMarketplaceReply.model_validate(data))
        record_spot_poll(session, 7, 1000.0, spot_reply(fixture_json))  # states no currency
    with database.sessions() as session:
        frame = spot_frame(session)
        only_7 = spot_frame(session, at=999.0)
    assert frame.rates_usd == {"bitcoin": 60000.0, "CLORE-Blockchain": 0.03}
    assert frame.bid_id.tolist() == [39, 44, 45, 39]
    assert frame.bid_currency.tolist() == ["", "bitcoin", "DOGE", ""]
    # 1e-4 BTC = 6 USD = 200 CLORE; DOGE has no rate: unknown, never cheap
    clore = frame.bid_prices_in("CLORE-Blockchain")
    assert clore[[0, 3]].tolist() == [30.0, 4.2e-6]
    assert clore[1] == pytest.approx(200.0) and np.isnan(clore[2])
    assert frame.bid_prices_in("bitcoin")[1] == 1e-4
    assert only_7.n_servers == 0


def test_rented_servers_are_not_rentable(database, fixture_json):
    listing = fixture_json("marketplace.json")
    listing["servers"][0]["rented"] = True
    theirs = {"offer_id": 1, "bid": 1.0, "active": True, "my": False}
    with database.sessions.begin() as session:
        record_marketplace(session, 900.0, MarketplaceReply.model_validate(listing))
        record_spot_poll(session, 6, 1000.0, spot_reply(fixture_json, offers=[theirs]))
    with database.sessions() as session:
        assert spot_frame(session).rentable.tolist() == [False]


def test_a_server_our_offer_is_on_stays_rentable_whatever_the_listing_says(database,
                                                                          fixture_json):
    """Issue 9, item 5: ``rented`` is documented as "rented on demand", but an exchange may set it
    while our own spot order runs; the server is ours to keep."""
    listing = fixture_json("marketplace.json")
    listing["servers"][0]["rented"] = True
    ours = {"offer_id": 1, "bid": 1.0, "active": True, "my": True}
    with database.sessions.begin() as session:
        record_marketplace(session, 900.0, MarketplaceReply.model_validate(listing))
        record_spot_poll(session, 6, 1000.0, spot_reply(fixture_json, offers=[ours]))
    with database.sessions() as session:
        assert spot_frame(session).rentable.tolist() == [True]


def test_currency_rates_are_stored_again_only_when_they_change(database, fixture_json):
    changed_rates = spot_reply(fixture_json)
    changed_rates.currency_rates_in_usd = {"bitcoin": 61000.0}
    with database.sessions.begin() as session:
        for when, reply in [(1.0, spot_reply(fixture_json)), (2.0, spot_reply(fixture_json)),
                            (3.0, changed_rates), (4.0, changed_rates)]:
            record_spot_poll(session, 6, when, reply)
        assert session.scalar(select(func.count()).select_from(CurrencyRates)) == 2
        assert session.scalar(select(func.count()).select_from(SpotOffer)) == 4


def test_spot_poll_refusals(database, fixture_json):
    offer = {"offer_id": 1, "bid": 1.0, "active": True, "my": False}
    twice = spot_reply(fixture_json, offers=[offer, offer])
    with database.sessions() as session:
        with pytest.raises(ValueError, match="lists an offer twice: \\[1\\]"):
            record_spot_poll(session, 6, 1.0, twice)
        with pytest.raises(ValueError, match="failed spot_marketplace reply \\(code 5\\)"):
            record_spot_poll(session, 6, 1.0, SpotMarketplaceReply(code=5))


def listed(database):
    with database.sessions() as session:
        return [tuple(r) for r in session.execute(
            select(MarketplaceServer.server_id, MarketplaceServer.first_listing,
                   MarketplaceServer.end_listing, MarketplaceServer.spot_floors)
            .order_by(MarketplaceServer.server_id, MarketplaceServer.first_listing))]


def test_marketplace_listings_are_deduplicated(database, fixture_json):
    base = fixture_json("marketplace.json")
    second = copy.deepcopy(base["servers"][0]) | {"id": 9, "specs": {"gpu": "2x RTX 3090"}}
    cheaper = copy.deepcopy(base)
    cheaper["servers"][0]["price"]["spot"] = {"bitcoin": 5e-7}
    cheaper["servers"].append(second)
    with database.sessions.begin() as session:
        first = record_marketplace(session, 100.0, MarketplaceReply.model_validate(base))
        same = record_marketplace(session, 200.0, MarketplaceReply.model_validate(base))
        change = record_marketplace(session, 300.0, MarketplaceReply.model_validate(cheaper))
        gone = record_marketplace(session, 400.0, MarketplaceReply.model_validate(
            {"code": 0, "servers": [second], "my_servers": []}))
    assert (first.servers, first.changed, first.closed) == (1, 1, 0)
    assert (same.changed, same.closed) == (0, 0)
    assert (change.servers, change.changed, change.closed) == (2, 2, 1)
    assert (gone.changed, gone.closed) == (0, 1)
    assert listed(database) == [(6, 1, 3, {"bitcoin": 1e-6}), (6, 3, 4, {"bitcoin": 5e-7}),
                                (9, 3, None, {"bitcoin": 1e-6})]
    with database.sessions() as session:
        row = session.get(MarketplaceServer, (9, 3))
        assert (row.gpu_count, row.gpu_model, row.country, row.owner, row.mrl) == \
            (2, "RTX 3090", None, 4, 73)
        assert row.specs == {"gpu": "2x RTX 3090"} and row.on_demand == {"bitcoin": 1e-5}


def test_marketplace_refusals(database, fixture_json):
    listing = MarketplaceReply.model_validate(fixture_json("marketplace.json"))
    with database.sessions.begin() as session:
        record_marketplace(session, 100.0, listing)
    with database.sessions() as session:
        with pytest.raises(ValueError, match="older than the newest recorded one"):
            record_marketplace(session, 50.0, listing)
        with pytest.raises(ValueError, match="lists server 6 twice"):
            record_marketplace(session, 150.0, MarketplaceReply(
                code=0, servers=listing.servers * 2))
        with pytest.raises(ValueError, match="failed marketplace reply"):
            record_marketplace(session, 150.0, MarketplaceReply(code=1))


@pytest.mark.parametrize("spec, expected", [
    ("2x NVIDIA GeForce RTX 4090", (2, "NVIDIA GeForce RTX 4090")),
    ("1x NVIDIA GeForce GTX 1080 Ti", (1, "NVIDIA GeForce GTX 1080 Ti")),
    (" 8 X RTX A5000 ", (8, "RTX A5000")),
    ("NVIDIA A100", (None, "NVIDIA A100")),
    ("", (None, "")),
    (None, (None, "")),
])
def test_parse_gpu_spec(spec, expected):
    assert parse_gpu_spec(spec) == expected

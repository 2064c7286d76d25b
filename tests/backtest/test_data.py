"""Loading recorded history from the database: candidates, best rivals, our own bids left out."""

from pathlib import Path

import numpy as np
import pytest

from bidder.backtest.data import HistoryError, load_history
from bidder.backtest.events import EventStream
from bidder.backtest.grid import expand_grid, run_backtest
from bidder.backtest.runner import RunSettings
from bidder.backtest.simrecord import record_sim
from bidder.config import CLORE, parse_config
from bidder.sim.options import SimOptions
from storage.db import open_database
from storage.gigaspot_ingest import SnapshotIngester
from storage.history import bid_intervals, bid_prices, snapshot_times

from bt_helpers import bid, encode, machine

T = 1_735_000_000
ME = 7


def config(**target):
    return parse_config({"targets": [{"name": "t", "market": "gigaspot", "count": 1,
                                      "max_price_per_gpu_day": 100, "gpu_model": "4090",
                                      "oc": {"pl": 200}, **target}]})


@pytest.fixture
def db(db_url: str):
    with open_database(db_url, writer=True) as database:
        yield database


def record(db, snapshots):
    ingester = SnapshotIngester(db.sessions)
    for minute, snapshot in enumerate(snapshots):
        ingester.ingest(encode(snapshot), snapshot_time=T + 60 * minute,
                        fetched_at=T + 60 * minute, source=f"s_{minute}.json", clore_price=0.05,
                        my_user_id=ME)


def load(db, cfg, **kw):
    with db.sessions() as session:
        return load_history(session, cfg.targets, allocation="highest_price", **kw)


def rivals_at(history, tick):
    market = history.markets["gigaspot"]
    rivals = market.rivals.current()
    for t in range(tick + 1):
        market.rivals.apply(t, rivals)
    return rivals


def test_our_recorded_bids_are_not_rivals_and_the_best_rival_is_kept(db):
    record(db, [
        {"1": machine([bid(11, ME, 50.0, active=True), bid(12, 20, 10.0), bid(13, 21, 12.0)]),
         "2": machine([bid(14, 22, 9.0)], model="RTX 3090")},
        {"1": machine([bid(11, ME, 50.0, active=True), bid(13, 21, 12.0)], min_bid=11.0)},
    ])
    h = load(db, config())
    market = h.markets["gigaspot"]
    assert market.server_id.tolist() == [1]  # machine 2 never matches the target
    assert h.my_user_ids == (ME,)
    first, second = rivals_at(h, 0), rivals_at(h, 1)
    assert first["price"].tolist() == [12.0] and first["bid_id"].tolist() == [13]
    assert second["price"].tolist() == [12.0]


def test_a_rival_under_the_floor_is_no_rival(db):
    record(db, [{"1": machine([bid(12, 20, 10.0)], min_bid=11.0)}])
    assert np.isnan(rivals_at(load(db, config()), 0)["price"][0])


def test_a_machine_that_leaves_the_snapshot_cannot_be_won(db):
    record(db, [{"1": machine([])}, {"3": machine([])}, {"1": machine([])}])
    market = load(db, config()).markets["gigaspot"]
    state = market.state.current()
    online = []
    for t in range(3):
        market.state.apply(t, state)
        online.append(bool(state["online"][0]))
    assert online == [True, False, True]


def test_rates_recorded_out_of_time_order_are_found_by_time(db):
    """An import of older polls adds rates rows after newer ones: each tick still gets the rates
    last seen at or before it."""
    from storage.models import CurrencyRates

    record(db, [{"1": machine([])}] * 8)
    with db.sessions.begin() as session:
        session.add(CurrencyRates(first_seen=T + 300, rates={"bitcoin": 2.0}))
        session.flush()
        session.add(CurrencyRates(first_seen=T + 90, rates={"bitcoin": 1.5}))  # older, added later
        session.flush()
        session.add(CurrencyRates(first_seen=T - 60, rates={"bitcoin": 1.0}))
    h = load(db, config())
    assert [h.rates_at(t).get("bitcoin") for t in range(h.n_ticks)] == \
        [1.0, 1.0, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0]


def test_an_empty_range_is_refused(db):
    record(db, [{"1": machine([])}])
    with pytest.raises(HistoryError, match="no GigaSPOT snapshots"):
        load(db, config(), start=T + 3600, end=T + 7200)


def test_a_recorded_simulated_market_replays_on_both_markets(db_url):
    with open_database(db_url, writer=True) as database:
        record_sim(database, SimOptions(seed=2, spot_servers=12, gigaspot_machines=40),
                   start=1_700_000_000.0, minutes=40)
        cfg = parse_config({"targets": [
            {"name": "g", "market": "gigaspot", "count": 2, "max_price_per_gpu_day": 80,
             "oc": {"pl": 150}},
            {"name": "s", "market": "spot", "count": 1, "max_price_per_gpu_day": 400}]})
        with database.sessions() as session:
            h = load_history(session, cfg.targets, allocation="host_profit")
    assert h.n_ticks == 40 and set(h.markets) == {"gigaspot", "spot"}
    result = run_backtest(h, cfg, expand_grid("outbid"), RunSettings(), modes=["replay"],
                          targets=cfg.targets)
    rows = {r["target"]: r for r in result.metrics[0]["targets"]}
    assert rows["g"]["availability"] > 0.9 and rows["s"]["availability"] > 0.5
    assert rows["s"]["cost"] > 0 and rows["g"]["regret"] >= 0


def test_best_rivals_are_the_same_found_in_blocks_of_ticks(db, monkeypatch):
    record(db, [{"1": machine([bid(10 + m, 20 + m % 3, 5.0 + (m * 7) % 5)]),
                 "2": machine([bid(40 + m, 30, 6.0), bid(60, 31, 4.0 + m % 4)])}
                for m in range(6)])
    whole = load(db, config())
    monkeypatch.setattr("bidder.backtest.data.CHUNK_CELLS", 1)
    blocks = load(db, config())
    for tick in range(6):
        a, b = rivals_at(whole, tick), rivals_at(blocks, tick)
        assert all(np.array_equal(a[c], b[c], equal_nan=a[c].dtype.kind == "f") for c in a)


def test_bid_prices_are_the_bid_versions_of_others_in_the_currency(db):
    record(db, [{"1": machine([bid(11, ME, 50.0, active=True), bid(12, 20, 10.0)]),
                 "2": machine([bid(14, 22, 9.0, active=True)])},
                {"1": machine([bid(11, ME, 50.0, active=True), bid(12, 20, 11.0)]),
                 "2": machine([bid(14, 22, 9.0, active=True), bid(15, 23, 8.0)])}])
    with db.sessions() as session:
        snapshots = snapshot_times(session)
        every = bid_intervals(session, None, None)
        ours_left_out = bid_prices(session, snapshots, currency=CLORE, exclude_owners=[ME])
        machine_2 = bid_prices(session, snapshots, [2], currency=CLORE)
        other_currency = bid_prices(session, snapshots, currency="BTC")
    kept = every.owner != ME
    for name in ("machine_id", "bid_id", "price", "pl", "active", "first", "last"):
        np.testing.assert_array_equal(getattr(ours_left_out, name), getattr(every, name)[kept])
    assert ours_left_out.bid_id.tolist() == [12, 12, 14, 15]  # by machine, bid and time
    assert machine_2.bid_id.tolist() == [14, 15] and machine_2.active.tolist() == [True, False]
    assert len(other_currency) == 0


def test_a_tick_applies_its_events_and_names_the_rows_they_changed():
    stream = EventStream.build(3, np.array([0, 2, 2]), np.array([1, 0, 2]),
                               {"price": np.array([5.0, 6.0, 7.0])},
                               {"price": np.array([1.0, 2.0, 3.0])})
    columns = stream.current()
    changed = [stream.apply(t, columns).tolist() for t in range(3)]
    assert changed == [[1], [], [0, 2]]
    assert columns["price"].tolist() == [6.0, 5.0, 7.0]


def test_spot_offers_in_other_currencies_are_converted_and_unknown_ones_never_cheap(db):
    """Three spot servers polled each minute: a rival at 1e-4 BTC (200 CLORE at the recorded
    rates), one at 120 CLORE, one in a currency without a rate. The replay holds the server that
    is really cheapest to win, as the live view would."""
    import copy
    import json

    from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
    from storage.spot_record import record_marketplace, record_spot_poll

    fixtures = Path(__file__).parents[1] / "storage" / "fixtures"
    listing = json.loads((fixtures / "marketplace.json").read_text())
    first = listing["servers"][0]
    listing["servers"] = [{**copy.deepcopy(first), "id": sid} for sid in (1, 2, 3)]
    doc = json.loads((fixtures / "spot_marketplace.json").read_text())

    def reply(offer):
        data = copy.deepcopy(doc)
        data["market"]["offers"] = [{"offer_id": 100, "active": True, "my": False, **offer}]
        data["market"]["server"]["min_pricing"] = {CLORE: 10.0}
        data["market"]["currency_rates_in_usd"] = {"bitcoin": 60_000.0, CLORE: 0.03}
        return SpotMarketplaceReply.model_validate(data)

    offers = {1: {"bid": 1e-4, "currency": "bitcoin"}, 2: {"bid": 120.0, "currency": CLORE},
              3: {"bid": 0.5, "currency": "DOGE"}}
    with db.sessions.begin() as session:
        record_marketplace(session, T - 60, MarketplaceReply.model_validate(listing))
        for minute in range(20):
            for sid, offer in offers.items():
                record_spot_poll(session, sid, T + 60 * minute + sid, reply(offer))
    cfg = parse_config({"targets": [{"name": "s", "market": "spot", "unit": "servers",
                                     "count": 1, "max_price_per_gpu_day": 500}]})
    history = load(db, cfg)
    market = history.markets["spot"]
    rivals = market.rivals.current()
    for t in range(history.n_ticks):
        market.rivals.apply(t, rivals)
    price = dict(zip(market.server_id.tolist(), rivals["price"].tolist()))
    assert price[1] == pytest.approx(200.0) and price[2] == 120.0 and price[3] == np.inf

    result = run_backtest(history, cfg, expand_grid("outbid"), RunSettings(), modes=["replay"],
                          targets=cfg.targets, workers=1)
    [run] = result.metrics
    [target] = run["targets"]
    assert target["availability"] > 0.8
    # server 2 at 120.01 plus fees; read naively, server 1 or 3 would have cost about 10 a day
    assert 120.01 * 1.025 <= target["cost_per_gpu_hour"] * 24 < 140


def test_a_spot_server_our_own_offer_holds_is_not_rented_to_someone_else(db):
    """The listing may mark a server rented while our own offer runs on it (it is documented as
    "rented on demand", but nothing guarantees it): where a poll saw an offer of ours the server
    stays ours to keep, as in the live frame; a rented server without one cannot be won."""
    import copy
    import json

    from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
    from bidder.backtest.market import ReplayMarket
    from storage.market_views import spot_frame
    from storage.spot_record import record_marketplace, record_spot_poll

    fixtures = Path(__file__).parents[1] / "storage" / "fixtures"
    listing = json.loads((fixtures / "marketplace.json").read_text())
    first = listing["servers"][0]
    listing["servers"] = [{**copy.deepcopy(first), "id": sid, "rented": True} for sid in (1, 2)]
    doc = json.loads((fixtures / "spot_marketplace.json").read_text())

    def reply(mine):
        data = copy.deepcopy(doc)
        data["market"]["offers"] = [{"offer_id": 100, "bid": 20.0, "active": True, "my": mine}]
        data["market"]["server"]["min_pricing"] = {CLORE: 10.0}
        return SpotMarketplaceReply.model_validate(data)

    with db.sessions.begin() as session:
        record_marketplace(session, T - 60, MarketplaceReply.model_validate(listing))
        for minute in range(5):
            for sid in (1, 2):
                record_spot_poll(session, sid, T + 60 * minute + sid, reply(mine=sid == 1))
    with db.sessions() as session:
        live = spot_frame(session)
    cfg = parse_config({"targets": [{"name": "s", "market": "spot", "unit": "servers",
                                     "count": 1, "max_price_per_gpu_day": 500}]})
    history = load(db, cfg)
    market = ReplayMarket(history, history.markets["spot"])
    for tick in range(history.n_ticks):
        market.advance(tick)
    assert dict(zip(market.data.server_id.tolist(), market.rentable.tolist())) \
        == dict(zip(live.server_id.tolist(), live.rentable.tolist())) == {1: True, 2: False}


def test_a_spot_poll_already_stale_at_the_next_tick_is_never_seen_fresh(db):
    """Ticks a day or more apart (a recording gap): a server's last poll before the gap is more
    than a day old at the next tick, so it is stale there, as the live frame would drop it; it
    must not show fresh because its poll and its expiry fall on the same tick."""
    import copy
    import json

    from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
    from bidder.backtest.market import ReplayMarket
    from storage.market_views import SPOT_MAX_AGE, spot_frame
    from storage.spot_record import record_marketplace, record_spot_poll

    fixtures = Path(__file__).parents[1] / "storage" / "fixtures"
    listing = json.loads((fixtures / "marketplace.json").read_text())
    first = listing["servers"][0]
    listing["servers"] = [{**copy.deepcopy(first), "id": sid, "rented": False} for sid in (1, 2)]
    doc = json.loads((fixtures / "spot_marketplace.json").read_text())
    data = copy.deepcopy(doc)
    data["market"]["offers"] = [{"offer_id": 100, "bid": 20.0, "active": True, "my": False}]
    data["market"]["server"]["min_pricing"] = {CLORE: 10.0}
    reply = SpotMarketplaceReply.model_validate(data)
    day = 86_400.0
    with db.sessions.begin() as session:
        record_marketplace(session, T - 60, MarketplaceReply.model_validate(listing))
        record_spot_poll(session, 1, T, reply)
        record_spot_poll(session, 1, T + 3600, reply)  # its last poll
        for at in (T, T + 3 * day):
            record_spot_poll(session, 2, at, reply)
    cfg = parse_config({"targets": [{"name": "s", "market": "spot", "unit": "servers",
                                     "count": 1, "max_price_per_gpu_day": 500}]})
    history = load(db, cfg, grid_interval=2 * day)
    assert history.time.tolist() == [T, T + 2 * day]
    market = ReplayMarket(history, history.markets["spot"])
    online = []
    for tick in range(history.n_ticks):
        market.advance(tick)
        online.append(dict(zip(market.data.server_id.tolist(), market.state["online"].tolist())))
    assert online == [{1: True, 2: True}, {1: False, 2: False}]  # 2: its poll of T expired
    with db.sessions() as session:  # live, at the second tick: server 1's poll is too old
        live = spot_frame(session, at=T + 2 * day, max_age=SPOT_MAX_AGE)
    assert 1 not in live.server_id.tolist()

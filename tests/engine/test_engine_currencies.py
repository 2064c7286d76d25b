"""Spot offers in other currencies: compared with the frame's own rates, and an offer whose
currency cannot be converted makes the price to beat unknown (never cheap), from the recorded
poll through the view to the strategy's bids and the engine's recent wins."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
from bidder.config import CLORE, MarketsConfig
from bidder.engine import recent_wins
from bidder.view import build_target_view
from storage.db import open_database
from storage.market_views import spot_frame
from storage.spot_record import record_marketplace, record_spot_poll
from strategies.outbid import Outbid

from engine_frames import NOW, Bid, Server, make_frame, make_target

FIXTURES = Path(__file__).parents[1] / "storage" / "fixtures"
RATES = {"bitcoin": 60_000.0, CLORE: 0.03}
"""1e-4 BTC = 6 USD = 200 CLORE."""


def with_currencies(frame, currencies):
    return dataclasses.replace(frame, bid_currency=np.array(currencies, dtype=object))


def view_of(frame, **target):
    return build_target_view(frame, make_target(**{"max_price_per_gpu_day": 500.0, **target}), [],
                             now=NOW, markets=MarketsConfig())


def test_a_rival_bidding_in_bitcoin_is_not_read_as_a_near_free_clore_bid():
    frame = make_frame([Server(1, bids=[Bid(1e-4, active=True), Bid(50.0)]),
                        Server(2, bids=[Bid(120.0, active=True)])], rates=RATES)
    naive = view_of(frame)  # the documented reply states no currency: all in ours
    assert naive.candidates.threshold.tolist() == [50.0, 120.0]

    mixed = view_of(with_currencies(frame, ["bitcoin", "", CLORE]))
    assert mixed.candidates.threshold[0] == pytest.approx(200.0)
    assert mixed.candidates.rival_price[0] == pytest.approx(200.0)
    assert mixed.candidates.threshold[1] == 120.0
    # so outbid takes server 2, the cheaper one to win, not server 1
    [bid] = Outbid().decide(mixed)
    assert bid.server_id == 2 and bid.price == pytest.approx(120.01)

    floors = {CLORE: 10.0, "bitcoin": 1e-6}
    both = make_frame([Server(1, floors=floors, bids=[Bid(1e-4, active=True), Bid(50.0)]),
                       Server(2, floors=floors, bids=[Bid(120.0, active=True)])], rates=RATES)
    in_bitcoin = view_of(with_currencies(both, ["bitcoin", CLORE, CLORE]), currency="bitcoin",
                         max_price_per_gpu_day=1.0)
    assert in_bitcoin.candidates.threshold[0] == pytest.approx(1e-4)
    assert in_bitcoin.candidates.threshold[1] == pytest.approx(120.0 * 0.03 / 60_000)


def test_an_offer_in_a_currency_without_a_rate_makes_its_server_unknown_never_cheap():
    frame = make_frame([Server(1, bids=[Bid(0.5, active=True)]),
                        Server(2, bids=[Bid(120.0, active=True)])], rates=RATES)
    view = view_of(with_currencies(frame, ["DOGE", ""]))
    assert np.isnan(view.candidates.threshold[0]) and np.isnan(view.candidates.rival_price[0])
    [bid] = Outbid().decide(view)
    assert bid.server_id == 2  # not the server whose rival "bids 0.5"

    # our own offer in another currency says nothing about the rivals
    ours = make_frame([Server(1, bids=[Bid(0.5, mine=True), Bid(20.0)])], rates=RATES)
    assert view_of(with_currencies(ours, ["DOGE", ""])).candidates.threshold.tolist() == [20.0]


def test_the_backtests_record_of_an_unconvertible_offer_is_unknown_to_the_strategy_as_live():
    """The backtest keeps an offer it could not convert as +inf (no bid of ours beats it in its
    fills); the strategy must see what the live view shows of the same offer: NaN, with market
    memory remembering no infinite high."""
    from bidder.memory import MarketMemory

    frame = make_frame([Server(1, bids=[Bid(float("inf"), active=True)]),
                        Server(2, bids=[Bid(120.0, active=True)])], rates=RATES)
    view = build_target_view(frame, make_target(max_price_per_gpu_day=500.0), [], now=NOW,
                             markets=MarketsConfig(), memory=MarketMemory())
    live = view_of(with_currencies(frame, ["DOGE", ""]))
    for seen in (view, live):
        assert np.isnan(seen.candidates.threshold[0]) and np.isnan(seen.candidates.rival_price[0])
        assert seen.candidates.threshold[1] == 120.0
    assert not np.isinf(view.candidates.rival_high).any()


def test_without_a_rate_for_our_own_currency_no_stated_offer_converts():
    frame = make_frame([Server(1, bids=[Bid(1e-4, active=True)])], rates={"bitcoin": 60_000.0},
                       clore_usd=float("nan"))
    view = view_of(with_currencies(frame, ["bitcoin"]))
    assert np.isnan(view.candidates.threshold[0])


def test_recorded_mixed_currency_polls_reach_the_strategy_and_recent_wins(tmp_path):
    """From ``spot_marketplace`` replies (rates inside ``market``) through the database."""
    doc = json.loads((FIXTURES / "spot_marketplace.json").read_text())
    listing = json.loads((FIXTURES / "marketplace.json").read_text())
    server = listing["servers"][0]
    other = copy.deepcopy(server)
    other["id"] = server["id"] + 1
    listing["servers"].append(other)

    def reply(offers):
        data = copy.deepcopy(doc)
        data["market"]["offers"] = offers
        data["market"]["server"]["min_pricing"] = {CLORE: 10.0, "bitcoin": 1e-6}
        data["market"]["currency_rates_in_usd"] = RATES
        return SpotMarketplaceReply.model_validate(data)

    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", writer=True) as db:
        with db.sessions.begin() as session:
            record_marketplace(session, NOW - 100, MarketplaceReply.model_validate(listing))
            record_spot_poll(session, server["id"], NOW - 10, reply(
                [{"offer_id": 1, "bid": 1e-4, "active": True, "my": False, "currency": "bitcoin"}]))
            record_spot_poll(session, other["id"], NOW - 10, reply(
                [{"offer_id": 2, "bid": 150.0, "active": True, "my": False,
                  "currency": CLORE}]))
        with db.sessions() as session:
            frame = spot_frame(session)
            ids = frame.server_id
            wins = recent_wins(session, "spot", ids, np.ones(len(ids), np.int32), NOW - 60, NOW,
                               currency=CLORE, usd_rate=frame.usd_rate)
            unknown = recent_wins(session, "spot", ids, np.ones(len(ids), np.int32), NOW - 60,
                                  NOW, currency="DOGE", usd_rate=frame.usd_rate)
    view = view_of(frame)
    assert sorted(view.candidates.threshold.tolist()) == pytest.approx([150.0, 200.0])
    [bid] = Outbid().decide(view)
    assert bid.server_id == other["id"] and bid.price == pytest.approx(150.01)
    assert sorted(wins.tolist()) == pytest.approx([150.0, 200.0])
    assert unknown.tolist() == []  # no rate for DOGE: left out, never counted as cheap

"""Spot servers rented on demand in backtests: a poll that shows offers waiting and none running
says the server is taken, and the backtester keeps away from it as the live engine does
(``bidder.engine.idle_spot_servers``): never bought, left when an order of ours waits there, and
not bought back for ``failed_rent_block``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
from bidder.backtest.data import load_history
from bidder.backtest.grid import expand_grid
from bidder.backtest.runner import RunSettings, run_variant
from bidder.config import CLORE, parse_config
from bidder.rules import Cancel, Create
from storage.db import open_database
from storage.spot_record import record_marketplace, record_spot_poll

T = 1_735_000_000.0
FIXTURES = Path(__file__).parents[1] / "storage" / "fixtures"


def reply(doc: dict, bid: float, running: bool) -> SpotMarketplaceReply:
    data = copy.deepcopy(doc)
    data["market"]["offers"] = [{"offer_id": 100, "active": running, "my": False, "bid": bid,
                                 "currency": CLORE}]
    data["market"]["server"]["min_pricing"] = {CLORE: 10.0}
    data["market"]["currency_rates_in_usd"] = {CLORE: 0.03}
    return SpotMarketplaceReply.model_validate(data)


@pytest.fixture
def recorded(db_url: str):
    """Server 1 (a rival at 50) is rented on demand from minute 20 to 39: its rival's offer
    waits, none runs. Server 2 (a rival at 80) runs throughout. Polled each minute for 90."""
    listing = json.loads((FIXTURES / "marketplace.json").read_text())
    first = listing["servers"][0]
    listing["servers"] = [{**copy.deepcopy(first), "id": sid, "rented": False} for sid in (1, 2)]
    doc = json.loads((FIXTURES / "spot_marketplace.json").read_text())
    with open_database(db_url, writer=True) as db:
        with db.sessions.begin() as session:
            record_marketplace(session, T - 60, MarketplaceReply.model_validate(listing))
            for minute in range(90):
                record_spot_poll(session, 1, T + 60 * minute + 1,
                                 reply(doc, 50.0, running=not 20 <= minute < 40))
                record_spot_poll(session, 2, T + 60 * minute + 2, reply(doc, 80.0, True))
        yield db


def run(db, **bot):
    cfg = parse_config({"bot": bot, "targets": [{"name": "s", "market": "spot",
                                                 "unit": "servers", "count": 1,
                                                 "max_price_per_gpu_day": 500}]})
    with db.sessions() as session:
        history = load_history(session, cfg.targets, allocation="highest_price")
    record = run_variant(history, cfg, expand_grid("outbid")[0], RunSettings(), "replay",
                         keep_trace=True)
    assert record.trace is not None
    return [((now - T) / 60, type(a).__name__, a.server_id) for now, plan in record.trace
            for a in plan.actions if isinstance(a, (Create, Cancel))]


def test_an_idle_server_is_left_and_kept_away_from(recorded):
    actions = run(recorded, rebuy_block=0.0)  # only the idle block keeps it away
    assert [(kind, sid) for _, kind, sid in actions][:3] == [
        ("Create", 1), ("Cancel", 1), ("Create", 2)]
    assert 20 <= actions[1][0] <= 21  # at the first decision after the poll that shows it idle
    # server 1 runs again from minute 40 and is cheaper, but stays blocked for
    # failed_rent_block (an hour) from when it was left
    back = [m for m, kind, sid in actions if kind == "Create" and sid == 1][1:]
    assert back and back[0] >= actions[1][0] + 60


def test_after_the_block_it_may_come_back_once_it_runs_again(recorded):
    actions = run(recorded, rebuy_block=0.0, failed_rent_block=600.0)
    assert [(kind, sid) for _, kind, sid in actions][:3] == [
        ("Create", 1), ("Cancel", 1), ("Create", 2)]
    back = [m for m, kind, sid in actions if kind == "Create" and sid == 1][1:]
    assert back and 40 <= back[0] <= 41  # not while it is idle (to minute 39), then at once

"""The simulator's fault mode and invariant report (issue 9)."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from bidder.clock import ManualClock
from bidder.cli import build_parser
from bidder.sim import SimMarket, SimOptions
from bidder.sim.faults import API_FAULTS, CDN_FAULTS, MUTATING_FAULTS
from bidder.sim.invariants import invariant_report
from sim_helpers import START
from storage.db import open_database
from storage.models import BotOrder

KEY = "fault-key"


def market(rate: float, **options) -> SimMarket:
    return SimMarket(SimOptions.quiet(spot_servers=6, gigaspot_machines=6, faults=rate,
                                      request_interval=0.0, create_interval=0.0, **options),
                     ManualClock(START))


def test_faults_are_off_by_default_and_rates_are_checked():
    assert market(0.0).faults.rate == 0.0
    with pytest.raises(ValueError, match="faults must be a fraction"):
        SimOptions(faults=1.5)
    parser = build_parser(["sim"])
    with pytest.raises(SystemExit):
        parser.parse_args(["sim", "--faults", "2"])
    assert parser.parse_args(["sim", "--faults", "0.05"]).faults == 0.05


def test_every_kind_of_fault_is_injected_and_a_lost_reply_still_acts():
    m = market(1.0)
    client = httpx.Client(transport=m.transport(), base_url="http://sim/", headers={"auth": KEY})
    seen: Counter[str] = Counter()
    for _ in range(80):
        try:
            reply = client.get("/v1/marketplace")
            seen[str(reply.status_code)] += 1
        except httpx.ReadTimeout:
            seen["timeout"] += 1
    server = m.world.servers[next(iter(m.world.servers))]
    for _ in range(120):
        try:
            client.post("/v1/create_order", json={
                "currency": "CLORE-Blockchain", "image": "x", "renting_server": server.id,
                "type": "spot", "spotprice": 10_000.0})
        except httpx.ReadTimeout:
            pass
    assert set(m.faults.counts) == set(MUTATING_FAULTS)
    assert {"200", "500", "502", "429", "timeout"} <= set(seen)
    assert m.faults.counts["lost_reply"] > 0
    # a lost reply's create happened: orders exist though no reply said so
    assert m.orders_of(KEY)
    cdn: Counter[str] = Counter()
    m.faults.rate = 0.5  # so that some get_gigaspot calls answer and their files are fetched
    for _ in range(200):
        try:
            reply = client.get("/v1/get_gigaspot")
            url = reply.json()["v1_snapshot_url"]
            body = client.get(httpx.URL(url).path).content
        except (httpx.ReadTimeout, ValueError, KeyError):
            continue
        try:
            parsed = json.loads(body)
        except ValueError:
            cdn["truncated"] += 1
            continue
        cdn["invalid" if any(not isinstance(v.get("bids"), list) for v in parsed.values())
            else "ok"] += 1
    assert set(API_FAULTS) <= set(m.faults.counts) and set(CDN_FAULTS) <= set(m.faults.counts)
    assert cdn["truncated"] and cdn["invalid"] and cdn["ok"]


def test_the_market_moves_the_same_with_faults():
    calm, faulty = market(0.0, agents=True), market(0.3, agents=True)
    for m in (calm, faulty):
        m.advance_to(START + 3600)
    assert [(o.id, o.venue_id, o.price) for o in calm.exchange.orders.values()] == \
        [(o.id, o.venue_id, o.price) for o in faulty.exchange.orders.values()]


def test_the_invariant_report_names_what_disagrees(tmp_path):
    m = market(0.0)
    user_client = httpx.Client(transport=m.transport(), base_url="http://sim/",
                               headers={"auth": KEY})
    servers = sorted(m.world.servers)[:3]
    for server_id in servers:
        assert user_client.post("/v1/create_order", json={
            "currency": "CLORE-Blockchain", "image": "x", "renting_server": server_id,
            "type": "spot", "spotprice": 10_000.0}).json()["code"] == 0
    a, b, c = (o.id for o in m.orders_of(KEY))
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}", writer=True) as db:
        with db.sessions.begin() as session:
            def row(order_id, server_id, state):
                session.add(BotOrder(target="s", market="spot", server_id=server_id,
                                     order_id=order_id, state=state, price=1.0,
                                     currency="CLORE-Blockchain", gpus=1, created_at=0.0,
                                     adopted=False, dry_run=False, lookups=0))
            row(b, servers[1], "closed")  # open at the exchange, closed here
            row(c, servers[2], "live")
            row(999, servers[0], "live")  # gone at the exchange
            row(None, servers[0], "pending")
        report = invariant_report(m, db, [KEY])
    assert report.unknown_to_db == [(a, servers[0])]
    assert report.closed_in_db == [(b, servers[1])]
    assert report.gone_at_exchange == [(999, servers[0])]
    assert report.in_flight == [(None, servers[0], "pending")]
    assert not report.ok and "BROKEN" in report.text()
    assert "unknown to the database: 1" in report.text()


def test_bidder_sim_prints_the_report_and_fails_when_broken(tmp_path, capsys):
    from bidder.commands.sim import _report

    m = market(0.0)
    assert _report(m, None) == 0
    assert capsys.readouterr().out.startswith("invariant report: OK (0 open orders")
    client = httpx.Client(transport=m.transport(), base_url="http://sim/", headers={"auth": KEY})
    client.post("/v1/create_order", json={"currency": "CLORE-Blockchain", "image": "x",
                                          "renting_server": sorted(m.world.servers)[0],
                                          "type": "spot", "spotprice": 10_000.0})
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    with open_database(url, writer=True):
        pass
    assert _report(m, url) == 1  # the order is unknown to that database
    out = capsys.readouterr().out
    assert "BROKEN" in out and "unknown to the database: 1" in out
    assert _report(m, f"sqlite:///{tmp_path / 'none.db'}") == 2

"""A bot on the simulated market raises every alert event, sends it to a real loopback receiver on
the bot's clock, records it for ``bidder status``; a hanging alert URL never delays a cycle; a
running bot serves /metrics and /healthz on a real port."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from bidder.alerts import announce_cancel_all
from bidder.clock import ManualClock, ScaledClock
from bidder.commands.cancel_all import cancel_all
from bidder.scheduler import run_jobs
from bidder.sim import SimMarket, SimOptions
from bidder.status import collect, render
from bot_helpers import KEY, START, Faults, assert_books_agree, assert_invariants, \
    assert_one_per_server, book, drive, giga_target, make_config, new_bot, spot_target
from ops_helpers import receiver
from storage.db import open_database
from storage.models import BotAlert, GigaspotSnapshot


@dataclass
class Switch:
    """The market's transport with two switches: ``down`` (every request fails to connect: the
    market stops) and ``bad_key`` (requests lose their key: the API answers code 3)."""

    faults: Faults
    clock: ManualClock
    down: bool = False
    bad_key: bool = False
    down_after: str | None = None
    """An endpoint: the market stops right after its next call (whatever that call's fate)."""
    went_down: float | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("the market is down", request=request)
        if self.bad_key and "auth" in request.headers:
            del request.headers["auth"]
        if self.down_after is None or not request.url.path.endswith("/" + self.down_after):
            return self.faults.handle(request)
        try:
            return self.faults.handle(request)
        finally:
            self.down, self.down_after, self.went_down = True, None, self.clock.now()


def alerts_in(database) -> list[BotAlert]:
    with database.sessions() as session:
        return list(session.scalars(select(BotAlert).order_by(BotAlert.id)))


def test_a_troubled_run_raises_every_alert_once_per_episode(clock, database, quiet, tmp_path):
    """The spot target's create times out and the market stops right after: its order stays
    unresolved, both markets go stale, both targets stay short (GigaSPOT's cap is met by no
    machine); the market comes back: fresh, resolved, the spot target held again; then the key is
    refused for a while; then the bot stops."""
    switch = Switch(Faults(quiet), clock, down_after="create_order")
    with receiver() as rec:
        config = make_config(
            spot_target(gpu_model="RTX 3090"), giga_target(count=2, max_price_per_gpu_day=0.01),
            alerts={"urls": [rec.url], "capacity_grace": 300.0, "unresolved_after": 300.0,
                    "repeat_after": 86_400.0})
        switch.faults.add("create_order", "timeout_after")
        bot = new_bot(config, database, clock, switch.transport(), tmp_path / "state")
        bot.start()
        drive(bot, clock, 900)
        assert switch.went_down is not None, "no create was sent"
        assert switch.down and [o.state for o in book(database)] == ["unknown"]
        switch.down = False
        drive(bot, clock, 900)
        assert_books_agree(quiet, database)
        switch.bad_key = True
        drive(bot, clock, 120)
        switch.bad_key = False
        drive(bot, clock, 120)
        bot.finish("SIGTERM received")
        sent = {}
        for alert in alerts_in(database):  # every recorded alert reached the receiver
            body = rec.next()
            sent[alert.id] = body
            assert body["title"] == alert.title and body["message"] == alert.body

    alerts = alerts_in(database)
    events = Counter((a.event, a.key) for a in alerts)
    assert events == {("capacity_short", "s"): 1, ("capacity_short", "g"): 1,
                      ("market_stale", "spot"): 1, ("market_stale", "gigaspot"): 1,
                      ("market_fresh", "spot"): 1, ("market_fresh", "gigaspot"): 1,
                      ("order_unresolved", str(book(database)[0].id)): 1,
                      ("capacity_restored", "s"): 1, ("key_rejected", "api"): 1,
                      ("bot_stopped", "bot"): 1}
    assert all(a.delivery == "sent" for a in alerts)
    assert all(KEY not in a.title + a.body for a in alerts)
    by_event = {a.event: a for a in alerts}
    down_at = switch.went_down
    # times are the bot's (manual) clock: stale 300 s after the last successful poll (just before
    # the market stopped), seen by the next cycle
    stale = [a for a in alerts if a.event == "market_stale"]
    assert all(down_at + 240 <= a.at <= down_at + 330 and "(limit 300 s)" in a.body for a in stale)
    assert by_event["order_unresolved"].at >= down_at + 300
    assert by_event["capacity_short"].at >= START + 300
    assert "holding 0 of 2 gpus" in next(a.title for a in alerts if a.key == "g")
    assert "holding 1 of 1 servers again" in by_event["capacity_restored"].title
    assert "code 3" in by_event["key_rejected"].body
    assert by_event["bot_stopped"].body.startswith("The live bot stopped at ")
    assert "SIGTERM received" in by_event["bot_stopped"].title
    assert_one_per_server(quiet)

    with database.sessions() as session:
        shown = collect(session, "db", clock)
    assert [a["event"] for a in shown.alerts][:2] == ["bot_stopped", "key_rejected"]
    text = render(shown)
    assert "recent alerts:" in text and "bot_stopped: bot stopped (live): SIGTERM received (sent)" \
        in text


def test_a_tight_budget_and_cancel_all_are_told(rig, database):
    with receiver() as rec:
        config = make_config(spot_target(count=2), budget=40.0,
                             alerts={"urls": [rec.url], "capacity_grace": 86_400.0})
        r = rig(config)
        r.start()
        r.run(1800)
        assert r.bot.oversight.alerts.wait_sent(10)
        budget = [a for a in alerts_in(database) if a.event == "budget_reached"]
        report = cancel_all(r.bot.client, database, r.clock, config)
        announce_cancel_all(config.alerts, database.sessions, r.clock, r.clock, [KEY],
                            report.cancelled, report.left)
        got = {b["title"]: b["message"] for b in rec.drain()}
    assert len(budget) == 1  # one alert for the whole episode (repeat_after: an hour)
    assert budget[0].key == "s" and budget[0].title == "s: the daily budget is reached"
    assert "deferred by the budget" in budget[0].body and "of 40 CLORE/day" in budget[0].body
    assert "server " in budget[0].body
    assert got[budget[0].title] == budget[0].body
    title = f"cancel-all cancelled {len(report.cancelled)} orders"
    assert report.cancelled and report.left == []
    assert all(f"{o} on server {s}" in got[title] for o, s in report.cancelled)
    assert alerts_in(database)[-1].event == "cancel_all"
    assert_books_agree(r.market, database)
    assert_one_per_server(r.market)


def test_a_hanging_alert_url_never_delays_a_cycle(rig, database):
    """Each cycle raises an alert (grace 0, nothing can be held) at a receiver that never
    answers: the cycles still run one after the other at once."""
    with receiver(hang=True) as hanging:
        config = make_config(giga_target(max_price_per_gpu_day=0.01),
                             alerts={"urls": [hanging.url], "capacity_grace": 0.0,
                                     "repeat_after": 30.0, "timeout": 60.0})
        r = rig(config)
        r.start()
        r.run(60)  # polls first, so that cycles decide
        assert hanging.arrived.wait(10)  # the sender is stuck at the receiver now
        before = len(alerts_in(database))
        for _ in range(20):
            done = threading.Event()
            threading.Thread(target=lambda: (r.bot.decide_job(), done.set()),
                             daemon=True).start()
            assert done.wait(10), "a cycle waited for the alert URL"
            r.clock.advance(30)
        after = alerts_in(database)
        assert len(after) - before >= 19  # a reminder each cycle, recorded at once
        assert {a.delivery for a in after[before:]} <= {"queued"}


def test_a_running_bot_serves_metrics_and_health(tmp_path):
    """A real bot on the simulated market, run by the real scheduler at 600x, scraped through the
    port it bound (port 0: any free one)."""
    clock = ScaledClock(600.0)
    market = SimMarket(SimOptions.quiet(spot_servers=8, gigaspot_machines=12), clock)
    config = make_config(spot_target(), giga_target(count=2), budget=1000.0,
                         monitor={"listen": "127.0.0.1:0"},
                         bot={"heartbeat_stale_after": 30.0}, api={"key": KEY,
                                                                   "base_url": "http://sim.test/v1",
                                                                   "min_interval": 1.05})
    with open_database(f"sqlite:///{tmp_path / 'run.db'}", writer=True) as database:
        bot = new_bot(config, database, clock, market.transport(), None, wall=ManualClock(0.0))
        wall = bot.wall
        bot.start()
        host, port = bot.oversight.server.address
        base = f"http://{host}:{port}"
        starting = httpx.get(f"{base}/healthz", timeout=5)
        runner = threading.Thread(target=run_jobs, args=(bot.jobs(),),
                                  kwargs={"speed": 600.0, "stop": bot.stop,
                                          "install_signal_handlers": False}, daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while True:  # wait until the bot holds something, scraping as Prometheus would
                metrics = httpx.get(f"{base}/metrics", timeout=5).text
                if 'bidder_target_held{target="s",unit="servers"} 1.0' in metrics:
                    break
                assert time.monotonic() < deadline, metrics
                bot.stop.wait(0.2)
            health = httpx.get(f"{base}/healthz", timeout=5)
        finally:
            bot.stop.set()
            runner.join(30)
        wall.advance(31)  # no cycle for longer than heartbeat_stale_after
        stale = httpx.get(f"{base}/healthz", timeout=5)
        missing = httpx.get(f"{base}/nothing", timeout=5)
        bot.finish("stopped")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=5)

    assert starting.status_code == 200 and starting.json()["status"] == "starting"
    assert health.status_code == 200 and health.headers["content-type"] == "application/json"
    body = health.json()
    assert body["status"] == "ok" and body["summary"].startswith("holding s 1/1 servers")
    assert stale.status_code == 503 and stale.json()["status"] == "stale"
    assert "last heartbeat 31 s ago (limit 30 s)" in stale.json()["reason"]
    assert missing.status_code == 404
    for needle in ('bidder_target_wanted{target="g",unit="gpus"} 2.0',
                   'bidder_budget_per_day{currency="CLORE-Blockchain"} 1000.0',
                   'bidder_spend_per_day{currency="CLORE-Blockchain"}',
                   'bidder_order_price{currency="CLORE-Blockchain",order="',
                   'bidder_api_calls_total{endpoint="my_orders",outcome="ok"}',
                   'bidder_market_data_age_seconds{market="gigaspot"}',
                   'bidder_market_data_age_seconds{market="spot"}',
                   "bidder_cycle_seconds_bucket{le=",
                   "bidder_cycle_seconds_count "):
        assert needle in metrics, needle
    assert json.dumps(body)  # small JSON: summary, heartbeat age, limit
    assert KEY not in metrics


def test_a_taken_port_is_a_clear_error(rig, tmp_path):
    import socket

    from bidder.monitor import MonitorError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(spot_target(), monitor={"listen": f"127.0.0.1:{port}"})
        r = rig(config)
        with pytest.raises(MonitorError, match=rf"\[monitor\] listen 127.0.0.1:{port}: cannot "
                                               "listen there"):
            r.start()


def test_routine_polls_fold_into_a_periodic_summary(rig, caplog):
    config = make_config(spot_target(), giga_target(), monitor={"log_summary_interval": 900.0})
    r = rig(config)
    r.start()
    with caplog.at_level(logging.INFO, logger="bidder.poller"):
        r.run(1850)
    info = [rec.getMessage() for rec in caplog.records
            if rec.name == "bidder.poller" and rec.levelno == logging.INFO]
    snapshots = [m for m in info if m.startswith("recorded GigaSPOT snapshot")]
    summaries = [m for m in info if m.startswith("market data in the last 15 min: ")]
    assert len(snapshots) == 1  # the first one; the next 30 at DEBUG
    assert len([m for m in info if m.startswith("recorded marketplace listing")]) == 1
    assert len(summaries) == 2, info
    with r.database.sessions() as session:
        recorded = session.scalar(select(func.count()).select_from(GigaspotSnapshot))
    first = int(summaries[0].split(": ", 1)[1].split(" GigaSPOT")[0])
    second = int(summaries[1].split(": ", 1)[1].split(" GigaSPOT")[0])
    assert first > 0 and recorded - 1 <= first + second <= recorded  # one may follow the last
    assert "(last: 12 machines)" in summaries[1]  # the quiet market has 12
    assert " spot polls in 30 rounds (0 failed), " in summaries[1]


def test_bidder_run_stops_on_a_taken_port_with_a_clear_error_and_an_alert(tmp_path, capsys):
    """The real command: a port already taken is a one-line error (exit 2), and the stop is
    recorded as a bot_stopped alert naming the error; then a --duration run says so when it stops."""
    import socket

    from bidder.cli import main

    db = tmp_path / "sim.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "bot.toml"
        config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n[monitor]\n'
                          f'listen = "127.0.0.1:{port}"\n[sim]\nspot_servers = 8\n'
                          'gigaspot_machines = 12\n[[targets]]\nname = "s"\nmarket = "spot"\n'
                          'count = 1\nmax_price_per_gpu_day = 400.0\n')
        assert main(["run", "--sim", "--config", str(config), "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert f"bidder run: [monitor] listen 127.0.0.1:{port}: cannot listen there: " in err
    assert "Traceback" not in err
    with open_database(f"sqlite:///{db}", writer=False) as database:
        [alert] = alerts_in(database)
    assert alert.event == "bot_stopped" and alert.delivery == "no urls"
    assert "an error: MonitorError: [monitor] listen" in alert.title

    config.write_text(config.read_text().replace(f"127.0.0.1:{port}", "127.0.0.1:0"))
    assert main(["run", "--sim", "--config", str(config), "--duration", "2"]) == 0
    with open_database(f"sqlite:///{db}", writer=False) as database:
        last = alerts_in(database)[-1]
    assert last.title == "bot stopped (sim): ran for 2 s as asked"


def test_bidder_run_tells_systemd_and_says_why_it_stopped(tmp_path, monkeypatch):
    """The real command under a real notify socket: READY=1 after the first cycle, then SIGTERM
    (as systemd sends it): STOPPING=1, and a bot_stopped alert naming the signal."""
    import os
    import signal

    from bidder.cli import main
    from ops_helpers import datagrams, notify_socket

    db = tmp_path / "sim.db"
    config = tmp_path / "bot.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n[sim]\nspot_servers = 8\n'
                      'gigaspot_machines = 12\n[[targets]]\nname = "s"\nmarket = "spot"\n'
                      'count = 1\nmax_price_per_gpu_day = 400.0\n')
    first: list[list[dict[str, str]]] = []
    with notify_socket(tmp_path) as (address, sock):
        monkeypatch.setenv("NOTIFY_SOCKET", address)

        def stop_when_ready() -> None:
            first.append(datagrams(sock, timeout=60))
            os.kill(os.getpid(), signal.SIGTERM)

        killer = threading.Thread(target=stop_when_ready, daemon=True)
        killer.start()
        assert main(["run", "--sim", "--config", str(config), "--duration", "120"]) == 0
        killer.join(10)
        rest = datagrams(sock, timeout=5)
    assert first[0] and first[0][0]["READY"] == "1" and first[0][0]["WATCHDOG"] == "1"
    assert rest[-1] == {"STOPPING": "1", "STATUS": "stopping: SIGTERM received"}
    with open_database(f"sqlite:///{db}", writer=False) as database:
        assert alerts_in(database)[-1].title == "bot stopped (sim): SIGTERM received"


def test_a_too_fast_reply_is_told_once_per_episode(rig, database):
    """The bot's own pacing never earns a code 5: one means something else spends the key's
    budget. Two refusals in a row are one episode (one alert naming the last), a cycle without
    any ends it, and a later one starts another."""
    r = rig(make_config(spot_target()))
    r.start()
    r.run(300)
    r.faults.add("spot_marketplace", "code_5")
    r.faults.add("spot_marketplace", "code_5", 2)  # its retry, refused again
    r.run(600)
    first = [a for a in alerts_in(database) if a.event == "rate_limited"]
    assert len(first) == 1 and first[0].key == "api"
    assert "2 time(s)" in first[0].body and "spot_marketplace" in first[0].body
    assert "(code 5)" in first[0].body
    r.faults.add("my_orders", "code_5")
    r.bot.executor.reconcile()
    r.run(300)
    again = [a for a in alerts_in(database) if a.event == "rate_limited"]
    assert len(again) == 2 and "1 time(s)" in again[1].body and "my_orders" in again[1].body
    assert_invariants(r.market, database)  # among them: the market itself refused nothing

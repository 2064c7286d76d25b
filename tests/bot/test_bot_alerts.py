"""Alerts: sent through Apprise to a real loopback receiver, one per episode with reminders,
recorded in the database, never blocking the caller (a hanging URL), never carrying the key."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from bidder.alerts import Alerts, Delivery, send_apprise
from bidder.clock import ManualClock
from bidder.config import AlertsConfig
from bot_helpers import KEY, START
from ops_helpers import receiver
from storage.models import BotAlert


def alerts_for(database, clock, urls, **kwargs) -> Alerts:
    config = AlertsConfig(urls=urls, timeout=kwargs.pop("timeout", 5.0),
                          repeat_after=kwargs.pop("repeat_after", 3600.0))
    return Alerts(config, database.sessions, clock, clock, run_id=None, secrets=[KEY], **kwargs)


def rows(database) -> list[BotAlert]:
    with database.sessions() as session:
        return list(session.scalars(select(BotAlert).order_by(BotAlert.id)))


def test_an_alert_reaches_a_real_receiver_and_is_recorded(database, clock):
    with receiver() as rec:
        alerts = alerts_for(database, clock, [rec.url])
        assert alerts.problem("market_stale", "gigaspot", "gigaspot data is stale",
                              f"last polled 400 s ago (key {KEY})")
        body = rec.next()
        assert alerts.wait_sent(10)
        alerts.close(5)
    assert body["title"] == "gigaspot data is stale"
    assert body["message"] == "last polled 400 s ago (key **********)"
    assert KEY not in str(body)
    [row] = rows(database)
    assert (row.event, row.key, row.at, row.delivery, row.reminder) == \
        ("market_stale", "gigaspot", START, "sent", False)
    assert KEY not in row.body


def test_one_alert_per_episode_and_a_reminder_every_repeat_after(database, clock):
    with receiver() as rec:
        alerts = alerts_for(database, clock, [rec.url], repeat_after=600.0)
        sent = []
        for _ in range(25):  # a problem seen every 60 s for 25 minutes
            sent.append(alerts.problem("capacity_short", "g", "g: holding 1 of 2 gpus", "..."))
            clock.advance(60)
        assert alerts.solved("capacity_short", "g",
                             then=("capacity_restored", "g: holding 2 of 2 gpus again", "..."))
        assert not alerts.solved("capacity_short", "g")  # only once
        assert alerts.problem("capacity_short", "g", "g: holding 0 of 2 gpus", "...")  # new one
        assert alerts.wait_sent(10)
        titles = [b["title"] for b in rec.drain()]
        alerts.close(5)
    assert sent.count(True) == 3 and sent[0] and sent[10] and sent[20]  # at 0, 600 and 1200 s
    assert titles == ["g: holding 1 of 2 gpus", "reminder: g: holding 1 of 2 gpus",
                      "reminder: g: holding 1 of 2 gpus", "g: holding 2 of 2 gpus again",
                      "g: holding 0 of 2 gpus"]
    assert [r.event for r in rows(database)] == ["capacity_short"] * 3 + \
        ["capacity_restored", "capacity_short"]


def test_a_hanging_url_never_blocks_the_caller(database, clock):
    """The caller (a cycle) returns at once while the sender waits on the hanging receiver; the
    other URL's alert is still delivered once the hanging one answers or times out."""
    with receiver(hang=True) as hanging, receiver() as ok:
        alerts = alerts_for(database, clock, [hanging.url, ok.url], timeout=20.0)
        done = threading.Event()

        def raise_two() -> None:
            alerts.problem("key_rejected", "api", "the API key was rejected", "code 3")
            alerts.notify("bot_stopped", "bot", "bot stopped", "SIGTERM received")
            done.set()

        threading.Thread(target=raise_two, daemon=True).start()
        assert hanging.arrived.wait(10)  # the sender is stuck in the hanging request ...
        assert done.wait(10)  # ... and the caller was never held up by it
        assert ok.received.empty()  # the second URL waits its turn in the sender thread
        assert [r.delivery for r in rows(database)] == ["queued", "queued"]
        hanging.release.set()
        assert alerts.wait_sent(20)
        assert [b["title"] for b in ok.drain()] == ["the API key was rejected", "bot stopped"]
        alerts.close(5)
    assert [r.delivery for r in rows(database)] == ["sent", "sent"]


def test_a_full_queue_drops_instead_of_blocking(database, clock):
    gate, entered = threading.Event(), threading.Event()
    sent: list[str] = []

    def slow(urls, title, body, timeout):
        entered.set()
        gate.wait(10)
        sent.append(title)
        return [Delivery("json://x", True)]

    alerts = alerts_for(database, clock, ["json://127.0.0.1:9/x"], send=slow, queue_size=1)
    alerts.notify("test", "t", "alert 0", "...")
    assert entered.wait(10)  # the sender holds alert 0
    for i in range(1, 4):
        alerts.notify("test", "t", f"alert {i}", "...")
    gate.set()
    assert alerts.wait_sent(10)
    alerts.close(5)
    deliveries = [r.delivery for r in rows(database)]
    assert deliveries[:2] == ["sent", "sent"]  # one being sent, one queued
    assert deliveries[2:] == ["dropped: the send queue was full"] * 2
    assert sent == ["alert 0", "alert 1"]


def test_a_refusing_url_is_recorded_as_failed_without_its_token(database, clock):
    with receiver(status=500) as rec:
        url = f"json://user:s3cr3t-token@127.0.0.1:{rec.port}/hook"
        alerts = alerts_for(database, clock, [url])
        alerts.notify("test", "t", "hello", "...")
        assert alerts.wait_sent(10)
        alerts.close(5)
    [row] = rows(database)
    assert row.delivery.startswith("failed: json://") and "s3cr3t-token" not in row.delivery


def test_no_urls_records_without_a_thread(database, clock):
    alerts = alerts_for(database, clock, [])
    alerts.notify("test", "t", "hello", "...")
    assert alerts._thread is None
    assert [r.delivery for r in rows(database)] == ["no urls"]


def test_send_apprise_reports_each_url(tmp_path):
    with receiver() as ok:
        results = send_apprise([ok.url, "json://127.0.0.1:9/closed", "nonsense://x"], "t", "b",
                               5.0)
        assert ok.next()["title"] == "t"
    assert [r.ok for r in results] == [True, False, False]
    assert results[0].url == f"json://127.0.0.1:{ok.port}/hook"
    assert results[2].error == "not a URL Apprise knows"


@pytest.mark.parametrize("urls", [["not a url"], ["tgram//x"]])
def test_config_refuses_what_is_not_a_url(urls):
    with pytest.raises(ValueError, match="not Apprise URLs"):
        AlertsConfig(urls=urls)


def test_alert_times_are_the_bots_clock(database):
    clock = ManualClock(START + 12_345)
    alerts_for(database, clock, []).notify("test", "t", "hello", "...")
    assert rows(database)[0].at == START + 12_345


def test_bidder_alerts_test_reports_each_url(tmp_path, capsys):
    from bidder.cli import main

    with receiver() as ok:
        config = tmp_path / "a.toml"
        config.write_text(f'[alerts]\nurls = ["{ok.url}", "json://127.0.0.1:9/closed"]\n')
        assert main(["alerts", "test", "--config", str(config)]) == 1
        body = ok.next()
    out = capsys.readouterr().out.splitlines()
    assert body["title"] == "clore-bidder test alert" and "alerts reach you" in body["message"]
    assert out == [f"ok      json://127.0.0.1:{ok.port}/hook",
                   "FAILED  json://127.0.0.1:9/closed: not accepted (unreachable or refused)",
                   "1 of 2 URLs accepted the test alert"]


def test_bidder_alerts_test_without_urls_is_a_clear_error(tmp_path, capsys):
    from bidder.cli import main

    config = tmp_path / "a.toml"
    config.write_text("")
    assert main(["alerts", "test", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith("bidder alerts: no [alerts] urls in ")
    assert not (tmp_path / "data").exists()

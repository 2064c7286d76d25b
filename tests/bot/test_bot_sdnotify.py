"""sd_notify over a real Unix datagram socket standing in for systemd: READY once the first cycle
ran, WATCHDOG and STATUS with every heartbeat, STOPPING at the end; nothing without NOTIFY_SOCKET."""

from __future__ import annotations

import logging

import pytest

from bidder.sdnotify import Notifier
from bot_helpers import make_config, spot_target
from ops_helpers import datagrams, notify_socket


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_speaks_the_protocol(tmp_path, abstract):
    with notify_socket(None if abstract else tmp_path) as (address, sock):
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "90000000"})
        assert notifier.enabled and notifier.watchdog_seconds == 90.0
        notifier.heartbeat("holding s 1/1 servers")
        notifier.heartbeat("holding s 0/1\nservers")
        notifier.stopping("SIGTERM received")
        got = datagrams(sock, timeout=5)
    assert got == [{"READY": "1", "WATCHDOG": "1", "STATUS": "holding s 1/1 servers"},
                   {"WATCHDOG": "1", "STATUS": "holding s 0/1 servers"},
                   {"STOPPING": "1", "STATUS": "SIGTERM received"}]


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_seconds is None
    assert notifier.send(READY="1") is False


def test_a_missing_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING):
        notifier.heartbeat("a")
        notifier.heartbeat("b")
    assert not notifier.ready_sent
    assert len([r for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]) == 1


def test_a_bot_notifies_ready_watchdog_and_stopping(rig, tmp_path):
    config = make_config(spot_target())
    with notify_socket(tmp_path) as (address, sock):
        r = rig(config)
        bot = r.start(oversight={"environ": {"NOTIFY_SOCKET": address}})
        assert datagrams(sock) == []  # not ready before the first cycle
        r.run(120)
        beats = datagrams(sock, timeout=5)
        bot.finish("SIGTERM received")
        last = datagrams(sock, timeout=5)
    assert beats[0]["READY"] == "1" and all("READY" not in b for b in beats[1:])
    assert len(beats) == 5  # cycles at 0, 30, 60, 90 and 120 s: one heartbeat each
    assert all(b["WATCHDOG"] == "1" and b["STATUS"].startswith("holding s ") for b in beats)
    assert last == [{"STOPPING": "1", "STATUS": "stopping: SIGTERM received"}]


def test_a_watchdog_shorter_than_two_cycles_is_warned_about(rig, caplog):
    config = make_config(spot_target(), bot={"decide_interval": 60.0})
    with caplog.at_level(logging.WARNING):
        rig(config).start(oversight={"environ": {"WATCHDOG_USEC": "30000000"}})
    assert any("WatchdogSec (30 s) is shorter than two decide intervals" in r.getMessage()
               for r in caplog.records)

"""``bidder run`` as a real process against a loopback ``bidder sim``: killed with SIGKILL at a few
moments and started again, it leaves no duplicate and no lost order; SIGTERM stops it cleanly
(exit 0); ``bidder cancel-all`` then cancels everything. Real time, so this test takes a while."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bidder.api import CloreClient
from bidder.clock import SystemClock
from bidder.config import load_config
from bidder.reconcile import Reconciler
from bot_helpers import KEY
from storage.db import open_database
from storage.models import BotOrder, BotRun

KILL_AFTER = (2.5, 5.0, 8.0)
"""Seconds each run lives before SIGKILL: mid start-up, mid creates, once settled."""


def config_text(url: str, tmp_path: Path) -> str:
    return f"""
data_dir = "{tmp_path / 'data'}"
[api]
base_url = "{url}"
timeout = 5.0
[storage]
url = "sqlite:///{tmp_path / 'bot.db'}"
[bot]
decide_interval = 1.0
reconcile_interval = 10.0
[poller]
gigaspot_interval = 5.0
spot_interval = 1.0
spot_polls_per_round = 3
marketplace_interval = 60.0
[[targets]]
name = "s"
market = "spot"
unit = "servers"
count = 2
max_price_per_gpu_day = 400.0
[[targets]]
name = "g"
market = "gigaspot"
count = 3
max_gpus_per_server = 1
max_price_per_gpu_day = 100.0
[targets.oc]
pl = 150
"""


@pytest.fixture
def sim_url() -> Iterator[str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "bidder", "sim", "--port", "0", "--quiet-market",
         "--spot-servers", "8", "--gigaspot-machines", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    sim.send_signal(signal.SIGTERM)
    assert sim.wait(timeout=20) == 0


def bidder(*args: str, config: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    where = ["--config", str(config)] if config is not None else []
    return subprocess.Popen([sys.executable, "-m", "bidder", *args, *where],
                            env={**os.environ, "CLORE_API_KEY": KEY, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def exchange_orders(url: str) -> list[dict]:
    time.sleep(1.1)  # the key's rate limit: one request per second (real time)
    reply = httpx.get(f"{url}/my_orders", headers={"auth": KEY}, timeout=10).json()
    assert reply["code"] == 0, reply
    return reply["orders"]


def test_killed_and_restarted_runs_keep_one_order_per_server(sim_url, tmp_path):
    config = tmp_path / "bot.toml"
    config.write_text(config_text(sim_url, tmp_path))
    for lifetime in KILL_AFTER:
        run = bidder("run", config=config)
        time.sleep(lifetime)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    run = bidder("run", config=config)
    time.sleep(12)
    run.send_signal(signal.SIGTERM)  # finish the call in flight, record it, exit 0
    out, log = run.communicate(timeout=60)
    assert run.returncode == 0, log
    assert "SIGTERM received" in log and KEY not in out + log

    # a restart reconciles first: do the same, then compare the books
    cfg = load_config(config)
    with open_database(cfg.storage_url(), writer=True) as db:
        with CloreClient.from_config(cfg.api, clock=SystemClock(), environ={"CLORE_API_KEY": KEY},
                                     state_dir=cfg.resolved_data_dir()) as client:
            Reconciler(client, db.sessions, SystemClock(), cfg.targets).reconcile()
        with db.sessions() as session:
            open_rows = session.scalars(select(BotOrder).where(BotOrder.state.in_(
                ("creating", "pending", "unknown", "live")))).all()
            runs = session.scalars(select(BotRun).order_by(BotRun.id)).all()
    orders = exchange_orders(sim_url)
    per_server = Counter(o["si"] for o in orders)
    assert max(per_server.values()) == 1, per_server
    assert len(orders) == 5  # two spot servers and three GigaSPOT machines
    assert {o.order_id for o in open_rows} == {o["id"] for o in orders}
    assert {o.state for o in open_rows} == {"live"}
    assert [r.stop_reason for r in runs] == [None] * len(KILL_AFTER) + ["SIGTERM received"]

    cancel = bidder("cancel-all", config=config)
    out, log = cancel.communicate(timeout=60)
    assert cancel.returncode == 0, log
    assert out.startswith("cancelled 5 orders:"), out
    assert exchange_orders(sim_url) == []


def test_the_demo_runs_without_a_key_and_status_reads_it(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path), "CLORE_API_KEY": ""}
    demo = bidder("run", "--sim", "--duration", "4", env=env)
    out, log = demo.communicate(timeout=60)
    assert demo.returncode == 0, log
    assert "created gigaspot order on server" in log and "see what it holds" in log
    status = bidder("status", "--sim", "--json", env=env)
    out, log = status.communicate(timeout=60)
    report = json.loads(out)
    assert status.returncode == 1 and report["summary"].startswith("not running: stopped")
    assert {t["name"] for t in report["targets"]} == {"mining", "training"}
    assert report["orders"] and report["run"]["mode"] == "sim"

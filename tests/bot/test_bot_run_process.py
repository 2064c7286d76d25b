"""``bidder run`` as a real process against a loopback ``bidder sim``: killed with SIGKILL at a few
moments and started again, it leaves no duplicate and no lost order; SIGTERM stops it cleanly
(exit 0); ``bidder cancel-all`` then cancels everything.

Real processes run in real time, so the test must wait for them; it never sleeps a fixed guess. It
watches the bot's database (read-only, every 50 ms) for the moment it wants and acts then: each
kill lands at a defined point (a run just started, a create journaled, every order live), and a
slow machine waits longer instead of failing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bidder.api import CallEvent, CloreClient
from bidder.api.models import MyOrder
from bidder.clock import SystemClock
from bidder.config import load_config
from bidder.reconcile import Reconciler
from bot_helpers import KEY
from storage.db import open_database
from storage.errors import StorageError
from storage.models import ApiJournal, BotOrder, BotRun

WANTED = 5
"""Orders the config holds: two spot servers and three GigaSPOT machines."""
LIVE = ("creating", "pending", "unknown", "live")
KILL_AT = ("started", "creating", "settled")
"""When each run is killed: just after it recorded its start, just after it journaled a create,
once every wanted order is live."""
WAIT_LIMIT = 90.0
"""Seconds to wait for a moment before the test fails (a loaded machine is slow; a bug hangs)."""


def counts(db_url: str) -> tuple[int, int, int] | None:
    """(runs, create calls journaled, live orders) in the bot's database; None while it is not
    there yet (the first run creates and migrates it)."""
    try:
        with open_database(db_url, writer=False) as db, db.sessions() as session:
            runs = len(session.scalars(select(BotRun.id)).all())
            creates = len(session.scalars(select(ApiJournal.id).where(
                ApiJournal.endpoint.in_(("create_order", "create_gigaspot_orders")))).all())
            live = len(session.scalars(select(BotOrder.id).where(BotOrder.state == "live")).all())
    except StorageError:
        return None
    return runs, creates, live


def wait_for(what: str, db_url: str, run: subprocess.Popen[str], done) -> tuple[int, int, int]:
    """Poll the database until ``done(counts)``; fail if the run exits or the limit passes."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        now = counts(db_url)
        if now is not None and done(now):
            return now
        assert run.poll() is None, f"the bot exited ({run.returncode}) before {what}"
        time.sleep(0.05)  # the only sleep: how often the database is looked at
    raise AssertionError(f"no {what} within {WAIT_LIMIT} s: {counts(db_url)}")


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
# a create the kill left unsent is given up after these (180 s and, for GigaSPOT while no newer
# snapshot came, 1800 s by default: longer than the test waits; a quiet simulated market publishes
# a snapshot only when something changed)
create_grace_seconds = 15.0
create_grace_max = 30.0
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


TEST_CALLS = "test-calls.txt"
"""The test's own API calls (its direct clients), one line each, beside the bot's database."""


def record_test_call(tmp_path: Path, event: CallEvent) -> None:
    with open(tmp_path / TEST_CALLS, "a", encoding="utf-8") as f:
        f.write(f"{event.started_at:.3f} {event.finished_at:.3f} {event.endpoint} "
                f"attempt {event.attempt} {event.outcome} code {event.code} (test)\n")


def calls_seen(tmp_path: Path) -> str:
    """Every API call the bot, cancel-all and the test made, in order of sending, with the gap
    from the previous call's reply: what the simulator's report of a refused request is read
    against (a rate-limit refusal here broke non-negotiable 5)."""
    lines = []
    with contextlib.suppress(sqlite3.Error):
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'bot.db'}?mode=ro",
                                                uri=True)) as db:
            lines = [f"{a:.3f} {b:.3f} {e} attempt {n} {o} code {c}" for a, b, e, n, o, c in
                     db.execute("SELECT started_at, finished_at, endpoint, attempt, outcome, code "
                                "FROM api_call WHERE NOT cdn")]
    with contextlib.suppress(FileNotFoundError):
        lines += (tmp_path / TEST_CALLS).read_text(encoding="utf-8").splitlines()
    lines.sort(key=lambda line: float(line.split()[0]))
    out, previous = [], None
    for line in lines:
        started, finished = (float(x) for x in line.split()[:2])
        gap = "" if previous is None else f"  (+{started - previous:.3f} s after the last reply)"
        out.append(line + gap)
        previous = finished
    return "\nAPI calls seen by the bot's database and the test:\n" + "\n".join(out)


@pytest.fixture
def sim_url(tmp_path: Path) -> Iterator[str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "bidder", "sim", "--port", "0", "--quiet-market",
         "--spot-servers", "8", "--gigaspot-machines", "12"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url
    sim.send_signal(signal.SIGTERM)
    report, _ = sim.communicate(timeout=20)  # the invariant report: says what broke on exit 1
    assert sim.returncode == 0, report + calls_seen(tmp_path)


def bidder(*args: str, config: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    where = ["--config", str(config)] if config is not None else []
    return subprocess.Popen([sys.executable, "-m", "bidder", *args, *where],
                            env={**os.environ, "CLORE_API_KEY": KEY, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def exchange_orders(config: Path) -> list[MyOrder]:
    """Our open orders as the exchange lists them, asked through a client sharing the key's
    rate-limit state with the bot and cancel-all: a request of the test's own that the limiter
    did not know of would let the next process's first call arrive within the second (code 5,
    and the simulator's invariant report fails)."""
    cfg = load_config(config)
    with CloreClient.from_config(cfg.api, clock=SystemClock(), environ={"CLORE_API_KEY": KEY},
                                 state_dir=cfg.resolved_data_dir(),
                                 observer=lambda e: record_test_call(config.parent, e)) as client:
        return list(client.my_orders().orders)


def test_killed_and_restarted_runs_keep_one_order_per_server(sim_url, tmp_path):
    config = tmp_path / "bot.toml"
    config.write_text(config_text(sim_url, tmp_path))
    db_url = f"sqlite:///{tmp_path / 'bot.db'}"
    for i, moment in enumerate(KILL_AT):
        before = counts(db_url) or (0, 0, 0)
        run = bidder("run", config=config)
        if moment == "started":
            wait_for("its run row", db_url, run, lambda c: c[0] > before[0])
        elif moment == "creating":
            wait_for("a create", db_url, run, lambda c: c[0] > before[0] and c[1] > before[1])
        else:
            wait_for("every order live", db_url, run, lambda c: c[0] > before[0] and c[2] == WANTED)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    run = bidder("run", config=config)
    # a restart reconciles and then holds: every order live again, then a few decide cycles
    runs = wait_for("every order live after the restart", db_url, run,
                    lambda c: c[0] == len(KILL_AT) + 1 and c[2] == WANTED)[0]
    settled = time.monotonic()
    while time.monotonic() - settled < 3.0:  # three 1-s decide cycles in which nothing may change
        assert run.poll() is None and counts(db_url)[::2] == (runs, WANTED)
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # finish the call in flight, record it, exit 0
    out, log = run.communicate(timeout=60)
    assert run.returncode == 0, log
    assert "SIGTERM received" in log and KEY not in out + log

    # a restart reconciles first: do the same, then compare the books
    cfg = load_config(config)
    with open_database(cfg.storage_url(), writer=True) as db:
        with CloreClient.from_config(cfg.api, clock=SystemClock(), environ={"CLORE_API_KEY": KEY},
                                     state_dir=cfg.resolved_data_dir(),
                                     observer=lambda e: record_test_call(tmp_path, e)) as client:
            Reconciler(client, db.sessions, SystemClock(), cfg.targets).reconcile()
        with db.sessions() as session:
            open_rows = session.scalars(select(BotOrder).where(BotOrder.state.in_(LIVE))).all()
            runs = session.scalars(select(BotRun).order_by(BotRun.id)).all()
    orders = exchange_orders(config)
    per_server = Counter(o.si for o in orders)
    assert max(per_server.values()) == 1, per_server
    assert len(orders) == WANTED
    assert {o.order_id for o in open_rows} == {o.id for o in orders}
    assert {o.state for o in open_rows} == {"live"}
    assert [r.stop_reason for r in runs] == [None] * len(KILL_AT) + ["SIGTERM received"]

    cancel = bidder("cancel-all", config=config)
    out, log = cancel.communicate(timeout=60)
    assert cancel.returncode == 0, log
    assert out.startswith("cancelled 5 orders:"), out
    assert exchange_orders(config) == []


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

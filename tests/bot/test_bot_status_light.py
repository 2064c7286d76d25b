"""``bidder status`` reads the database through ``storage.reader`` (DB-API drivers, no ORM): it sees
the open orders the bot sees, on both backends, and as a process imports neither SQLAlchemy nor
pydantic nor numpy (a monitor calls it every minute)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from bidder.book import OrderRow, read_open_orders
from bidder.bot import public_config
from bidder.clock import ManualClock
from bidder.orders import open_orders
from bidder.status import collect
from bot_helpers import START, assert_books_agree, assert_invariants, giga_target, make_config, \
    spot_target
from storage.db import open_database
from storage.errors import StorageError
from storage.models import (
    ApiCall,
    BotAlert,
    BotCycle,
    BotDecision,
    BotLog,
    BotOrder,
    BotRun,
    CurrencyRates,
)
from storage.reader import open_reader, reader_of

HEAVY = ("sqlalchemy", "pydantic", "numpy")
STATES = ("creating", "pending", "unknown", "live", "closed", "failed")


def _order(n: int, state: str, *, dry_run: bool, **extra: object) -> BotOrder:
    return BotOrder(
        target=None if n % 5 == 4 else ("s" if n % 2 else "g"),
        market="spot" if n % 2 else "gigaspot", server_id=1000 + n,
        order_id=None if state == "creating" else (-n if dry_run else 500_000 + n), state=state,
        price=10.0 + n / 7, currency="CLORE-Blockchain", gpus=1 + n % 4, created_at=START + n,
        last_lowered_at=START + 60 + n if n % 3 == 0 else None,
        told_next_lower_at=START + 900 if n % 4 == 0 else None,
        market_state=(None, "winning", "outbid")[n % 3] if state == "live" else None,
        adopted=n % 5 == 4, dry_run=dry_run, lookups=0, **extra)


def seed(url: str) -> None:
    """A stopped run with orders in every state (real and dry-run, managed and unmanaged), a
    decided cycle with a deferred wish, API calls, rates, a problem and an alert: every query of
    ``bidder status`` has rows to read."""
    config = make_config(spot_target(), giga_target(), budget=500.0)
    with open_database(url, writer=True) as db, db.sessions.begin() as session:
        run = BotRun(mode="live", started_at=START, started_wall=START, speed=1.0, pid=42,
                     config=public_config(config), heartbeat_at=START + 50,
                     heartbeat_wall=START + 50, stopped_at=START + 60, stop_reason="stopped")
        session.add(run)
        n = 0
        for dry_run in (False, True):
            for state in STATES:
                for _ in range(3):
                    n += 1
                    session.add(_order(n, state, dry_run=dry_run))
        session.add(CurrencyRates(first_seen=START, rates={"CLORE-Blockchain": 0.03}))
        session.flush()
        cycle = BotCycle(run_id=run.id, at=START + 30, wall_at=START + 30, mode="live",
                         actions=1)
        session.add(cycle)
        session.flush()
        session.add(BotDecision(cycle_id=cycle.id, target="s", strategy="outbid", params={},
                                orders=[], actions=[], deferred=[{
                                    "server_id": 1001, "wanted_price": 9.5, "reason": "cooldown",
                                    "not_before": START + 700}]))
        session.add(BotCycle(run_id=run.id, at=START + 59, wall_at=START + 59, mode="live",
                             skipped="market data stale", actions=0))
        for k, outcome in enumerate(("ok", "ok", "rate_limited", "error")):
            session.add(ApiCall(endpoint="spot_marketplace", priority=1, started_at=START + k,
                                finished_at=START + k + 0.5, attempt=1, outcome=outcome,
                                cdn=False))
        session.add(BotLog(at=START + 40, wall_at=START + 40, level="WARNING", source="test",
                           message="a problem"))
        session.add(BotAlert(run_id=run.id, at=START + 60, wall_at=START + 60,
                             event="bot_stopped", key="bot", title="bot stopped", body="body",
                             reminder=False, delivery="no urls"))


def as_rows(orders: list[BotOrder]) -> list[OrderRow]:
    return [OrderRow(**{name: getattr(o, name) for name in OrderRow.__dataclass_fields__})
            for o in orders]


@pytest.mark.parametrize("dry_run", [False, True])
def test_status_sees_the_open_orders_the_bot_sees(db_url, dry_run):
    seed(db_url)
    with open_database(db_url, writer=False) as db, db.sessions() as session:
        bot_view = as_rows(open_orders(session, dry_run=dry_run))
        in_session = read_open_orders(reader_of(session), dry_run=dry_run)
    with open_reader(db_url) as reader:
        own_connection = read_open_orders(reader, dry_run=dry_run)
    assert len(bot_view) == 3 * 4  # three orders in each open state
    assert {o.dry_run for o in bot_view} == {dry_run}
    assert own_connection == in_session == bot_view


def test_status_sees_the_orders_a_running_bot_holds(rig, database, db_url):
    """A bot on the simulated market (a spot target, two GigaSPOT machines): status's reading of
    its book, and the status built from it, equal the bot's own."""
    r = rig(make_config(spot_target(), giga_target(count=2)))
    r.start()
    r.run(600)
    with database.sessions() as session:
        bot_view = as_rows(open_orders(session, dry_run=False))
        from_session = collect(session, "db", r.clock)
    with open_reader(db_url) as reader:
        light = read_open_orders(reader, dry_run=False)
        from_reader = collect(reader, "db", r.clock)
    assert len(bot_view) == 3 and light == bot_view
    assert asdict(from_reader) == asdict(from_session)
    assert sorted(o.local_id for o in from_reader.orders) == sorted(o.id for o in bot_view)
    assert_books_agree(r.market, database)
    assert_invariants(r.market, database)


def test_status_shows_what_was_seeded(db_url):
    seed(db_url)
    with open_reader(db_url) as reader:
        shown = collect(reader, db_url, ManualClock(START + 120))
    assert (shown.healthy, shown.summary) == (False, f"not running: stopped at "
                                                     f"2023-11-14 22:14:20 (stopped)")
    assert len(shown.orders) == 12 and {o.local_id for o in shown.orders} == set(range(1, 13))
    assert [o.target for o in shown.orders] == [None] * 2 + ["g"] * 5 + ["s"] * 5  # unmanaged first
    assert (shown.calls_last_hour, shown.rate_limited_last_hour, shown.failed_calls_last_hour) \
        == (4, 1, 2)
    assert shown.last_cycle is not None and shown.last_cycle["skipped"] == "market data stale"
    [step] = shown.next_steps
    assert (step.server_id, step.wanted_price, step.reason) == (1001, 9.5, "cooldown")
    assert [e["message"] for e in shown.errors] == ["a problem"]
    assert [a["event"] for a in shown.alerts] == ["bot_stopped"]
    live = {o.local_id: o for o in shown.orders if o.local_id >= 10}  # the live ones
    assert {k: o.state for k, o in live.items()} == {10: "winning", 11: "outbid", 12: "pending"}
    assert all(o.usd_per_day == pytest.approx(o.price * 0.03) for o in shown.orders)
    assert live[10].next_lower_at is not None and shown.orders[0].next_lower_at is None


def test_the_reader_cannot_write(db_url):
    seed(db_url)
    with open_reader(db_url) as reader, pytest.raises(StorageError, match="cannot read the "):
        reader.rows("DELETE FROM bot_log")
    with open_reader(db_url) as reader:
        assert reader.scalar("SELECT count(*) FROM bot_log") == 1


def test_an_empty_database_is_refused_and_left_empty(db_url, db_backend):
    if db_backend == "sqlite":
        path = Path(db_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True)
        path.touch()  # a file, but nothing recorded in it
    with pytest.raises(StorageError, match="has schema version 0; this clore-bidder needs"):
        open_reader(db_url)
    engine = create_engine(db_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def imported_modules(stderr: str) -> set[str]:
    """Every module ``python -X importtime`` reported importing."""
    return {m.group(1) for m in re.finditer(r"^import time:\s*\d+ \|\s*\d+ \|\s*(\S+)$", stderr,
                                            re.MULTILINE)}


def run_status(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "bidder", "status", *argv],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


def heavy_in(stderr: str) -> list[str]:
    names = imported_modules(stderr)
    assert "bidder.status" in names and "storage.reader" in names  # the probe sees imports
    return sorted(n for n in names if n.partition(".")[0] in HEAVY)


def test_status_with_a_config_imports_no_heavy_library(db_url, tmp_path):
    seed(db_url)
    config = tmp_path / "monitor.toml"
    config.write_text(f'[storage]\nurl = "{db_url}"\n\n[[targets]]\nname = "unchecked"\n')
    done = run_status(["--config", str(config)], {"XDG_DATA_HOME": str(tmp_path / "none")})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.startswith("bidder status: not running: stopped at 2023-11-14 22:14:20")
    assert "next:\n  s: will lower 1001 to 9.5" in done.stdout
    assert heavy_in(done.stderr) == []


def test_status_without_a_config_imports_no_heavy_library(tmp_path):
    data = tmp_path / "data"
    seed(f"sqlite:///{data / 'clore-bidder' / 'bidder.db'}")
    done = run_status(["--json"], {"XDG_DATA_HOME": str(data)})
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert len(report["orders"]) == 12 and report["exit_code"] == 1
    assert heavy_in(done.stderr) == []

"""``bidder status``: the table and JSON from the database alone, and exit codes for monitors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import create_engine, inspect, select

from bidder.cli import main
from bidder.clock import SystemClock
from bot_helpers import START, make_config, spot_target
from storage.db import open_database
from storage.models import BotLog, BotRun, SchemaVersion

SERVER = 1084
T0 = "2023-11-14 22:13:20"
"""The wall clock frozen at the bot clock's start (``START``)."""


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "status.toml"
    path.write_text(f'[storage]\nurl = "{db_url}"\n')
    return path


def status(capsys, config_file: Path, *extra: str) -> tuple[int, str]:
    code = main(["status", "--config", str(config_file), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def running(rig):
    """A bot that holds the cheapest spot server after a rival left: its lowering waits."""
    with freeze_time(T0):
        assert SystemClock().now() == START
        r = rig(make_config(spot_target(), budget=500.0,
                            bot={"heartbeat_stale_after": 120.0}))
        rival = r.market.place_rival(SERVER, 20.0)
        r.faults.add("marketplace", "not_sent")  # a problem for the status to show
        r.start(wall=SystemClock())
        r.run(90)
        r.market.cancel(rival.id)
        r.run(120)
    return r


def test_a_fresh_bot_is_healthy_and_shown_in_full(running, capsys, config_file):
    with freeze_time("2023-11-14 22:14:20"):  # a minute of wall time after its last heartbeat
        code, text = status(capsys, config_file)
        assert code == 0
        assert "bidder status: running: last heartbeat 60 s ago" in text
        assert "s       spot    1 / 1 servers  1       outbid" in text
        assert "11.1014" not in text.split("next:")[0]  # it holds at 20.01 until allowed lower
        assert f"will lower {SERVER} to 11.1014 at " in text and "(cooldown)" in text
        assert "budget 500 CLORE-Blockchain" in text
        assert "WARNING bidder.api.client: marketplace: not sent" in text  # the last problems

        code, raw = status(capsys, config_file, "--json")
    assert code == 0
    report = json.loads(raw)
    assert report["healthy"] is True and report["exit_code"] == 0
    assert report["targets"] == [{"name": "s", "market": "spot", "unit": "servers", "wanted": 1,
                                  "held": 1, "orders": 1, "strategy": "outbid"}]
    [order] = report["orders"]
    assert (order["server_id"], order["state"], order["currency"]) == (
        SERVER, "winning", "CLORE-Blockchain")
    assert order["price"] == pytest.approx(20.01)
    assert order["usd_per_day"] == pytest.approx(20.01 * 0.03)
    assert order["next_lower_at"] == pytest.approx(START + 30 + 600, abs=31)
    assert report["spend_per_day"] == pytest.approx(20.01 * 1.025)
    assert report["budget_per_day"] == 500.0
    assert report["calls_last_hour"] > 10 and report["rate_limited_last_hour"] == 0
    assert report["ages"]["spot_poll"] < 60
    [step] = report["next_steps"]
    assert (step["reason"], step["wanted_price"]) == ("cooldown", 11.1014)
    assert any("marketplace" in e["message"] for e in report["errors"])


def test_status_reads_the_last_commit_while_the_bot_is_writing(running, capsys, config_file):
    """The bot in the middle of a write (a new problem logged, its run stopping, not committed
    yet): ``bidder status`` is not blocked and shows what was committed, on both backends."""
    with freeze_time("2023-11-14 22:14:20"), running.database.sessions.begin() as writing:
        writing.add(BotLog(at=START + 300, wall_at=START + 300, level="ERROR", source="test",
                           message="half-written problem"))
        run = writing.scalars(select(BotRun)).one()
        run.stopped_at, run.stop_reason = START + 300, "stopped"
        writing.flush()  # written, holding the writer's lock / row versions, not committed
        code, text = status(capsys, config_file)
        assert code == 0 and "bidder status: running: last heartbeat 60 s ago" in text
        assert "half-written problem" not in text
    with freeze_time("2023-11-14 22:14:20"):
        code, text = status(capsys, config_file)
    assert code == 1 and "half-written problem" in text


def test_a_stale_heartbeat_exits_1(running, capsys, config_file):
    with freeze_time("2023-11-14 22:15:30"):  # 130 s of wall time: over the 120-s limit
        code, text = status(capsys, config_file)
    assert code == 1
    assert "bidder status: STALE: last heartbeat 130 s ago (limit 120 s)" in text


def test_a_stopped_bot_exits_1(running, capsys, config_file):
    with freeze_time(T0):
        running.bot.finish("stopped")
        code, text = status(capsys, config_file, "--json")
    assert code == 1
    assert json.loads(text)["summary"].startswith("not running: stopped at 2023-11-14 ")


def test_a_missing_database_is_said_plainly(capsys, config_file, db_url, db_backend):
    code, text = status(capsys, config_file)
    assert code == 2
    if db_backend == "sqlite":
        assert "bidder status: no database at " in text and "nothing has been recorded" in text
        assert not Path(db_url.removeprefix("sqlite:///")).exists()
    else:  # a server database nothing has written to yet: status creates no tables in it
        assert "has schema version 0; this clore-bidder needs" in text
        engine = create_engine(db_url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()


def test_a_database_without_a_run_is_not_healthy(capsys, config_file, db_url):
    open_database(db_url, writer=True).close()
    code, text = status(capsys, config_file)
    assert (code, text.splitlines()[0]) == (
        1, "bidder status: no bot run recorded in this database")


def test_before_the_first_polls_the_ages_are_said_in_words():
    from bidder.status import Status, market_ages, render
    text = render(Status("sqlite:///x.db", True, "running", bot_time=START, ages={
        "gigaspot_snapshot": None, "spot_poll": None, "marketplace_listing": None,
        "api_poll": None}, run={"id": 1, "mode": "live", "speed": 1.0, "started_at": START,
                                "pid": 7}))
    assert ("market data: no GigaSPOT snapshot yet, no spot poll yet, no listing yet, "
            "no API poll yet") in text
    assert "never" not in text
    assert market_ages({"gigaspot_snapshot": 64.0, "spot_poll": None, "marketplace_listing": 3600.0,
                        "api_poll": 3.0}) == (
        "GigaSPOT snapshot 64 s old, no spot poll yet, listing 60 min old, last API poll 3 s ago")


def test_a_database_of_another_schema_is_refused(capsys, config_file, db_url):
    with open_database(db_url, writer=True) as db, db.sessions.begin() as session:
        session.add(SchemaVersion(version=99, description="from the future"))
    code, text = status(capsys, config_file)
    assert code == 2 and "written by a newer clore-bidder" in text


def test_every_deferral_reason_reads_as_words():
    """Each reason the rules engine defers for is told in words, none shown raw (``watching``
    came with the spot watch-list round)."""
    from typing import get_args

    from bidder.rules import DeferReason
    from bidder.status import _next_text

    for reason in get_args(DeferReason):
        text = _next_text({"server_id": 7, "wanted_price": 1.5, "reason": reason,
                           "not_before": None}, 0.0)
        assert text.startswith("will ") or f": {reason}" not in text, (reason, text)
    assert "first full round of spot polls" in _next_text(
        {"server_id": 7, "wanted_price": 1.5, "reason": "watching", "not_before": None}, 0.0)

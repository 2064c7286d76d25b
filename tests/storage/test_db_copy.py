"""``bidder db copy``: a recorder/bot database moved to the other backend, checked by row counts,
by a backtest that gives the same results on both, and by recording on after the copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from bidder.backtest.simrecord import record_sim
from bidder.cli import main
from bidder.sim.options import SimOptions
from storage.db import open_database, sqlite_path
from storage.models import BotOrder, BotOrderEvent, BotRun, GigaspotSnapshot
from storage.transfer import copy_tables, row_counts

START = 1_700_000_000.0
CONFIG = """
[[targets]]
name = "rigs"
market = "gigaspot"
count = 3
max_price_per_gpu_day = 80
oc = {{ pl = 150 }}

[[targets]]
name = "spot"
market = "spot"
count = 1
max_price_per_gpu_day = 80
"""
OTHER = {"sqlite": "postgresql", "postgresql": "sqlite"}


def fill(url: str) -> None:
    """A recorded market (snapshots, spot polls, listings) and a bot run with an order."""
    with open_database(url, writer=True) as db:
        record_sim(db, SimOptions(seed=3, spot_servers=4, gigaspot_machines=25), start=START,
                   minutes=30, listing_every=10)
        with db.sessions.begin() as session:
            run = BotRun(mode="sim", started_at=START, started_wall=START, speed=60.0, pid=1,
                         config={"targets": ["rigs"], "nested": {"x": [1, 2.5, None]}})
            session.add(run)
            session.flush()
            order = BotOrder(target="rigs", market="gigaspot", server_id=7, order_id=42,
                             state="live", price=1.25, currency="CLORE-Blockchain", gpus=2,
                             oc=[{"pl": 150}], created_at=START, adopted=False, dry_run=False,
                             lookups=0)
            session.add(order)
            session.flush()
            session.add(BotOrderEvent(order_ref=order.id, at=START + 1, kind="created",
                                      price=1.25, detail={"why": "test"}))


def backtest_json(url: str, folder: Path) -> dict:
    config = folder / "c.toml"
    config.write_text(CONFIG.format())
    out = folder / f"bt-{len(list(folder.iterdir()))}.json"
    assert main(["backtest", "--config", str(config), "--db", url, "--workers", "1",
                 "--strategy", "outbid", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_copy_to_the_other_backend_has_every_row_and_backtests_the_same(
        db_url, db_backend, fresh_db_url, tmp_path, capsys):
    fill(db_url)
    target = fresh_db_url(OTHER[db_backend])
    assert main(["db", "copy", "--from", db_url, "--to", target]) == 0
    out = capsys.readouterr().out
    assert "row counts match" in out

    with open_database(db_url, writer=False) as a, open_database(target, writer=False) as b:
        with a.engine.connect() as ca, b.engine.connect() as cb:
            counts = row_counts(ca)
            assert counts == row_counts(cb)
        assert counts["gigaspot_snapshot"] == 30 and counts["spot_poll"] > 0
        assert counts["bot_order_event"] == 1
        with b.sessions() as session:
            run = session.scalars(select(BotRun)).one()
            assert run.config == {"targets": ["rigs"], "nested": {"x": [1, 2.5, None]}}
            assert session.scalars(select(BotOrder.oc)).one() == [{"pl": 150}]

    first, second = backtest_json(db_url, tmp_path), backtest_json(target, tmp_path)
    assert first["settings"] == second["settings"]
    for run_a, run_b in zip(first["runs"], second["runs"], strict=True):
        assert run_a["strategy"] == run_b["strategy"] and run_a["mode"] == run_b["mode"]
        for ta, tb in zip(run_a["targets"], run_b["targets"], strict=True):
            assert ta.keys() == tb.keys()
            for key, value in ta.items():
                assert tb[key] == (pytest.approx(value, rel=1e-12, abs=1e-12)
                                   if isinstance(value, float) else value), key

    # the copy is a working database: the bot and the recorder carry on in it
    with open_database(target, writer=True) as db, db.sessions.begin() as session:
        session.add(BotOrder(target="rigs", market="gigaspot", server_id=8, state="creating",
                             price=1.0, currency="CLORE-Blockchain", gpus=1, created_at=START + 9,
                             adopted=False, dry_run=False, lookups=0))
        session.add(GigaspotSnapshot(time=int(START) + 99_999, fetched_at=START, source="x",
                                     sha256="0" * 64, machines=0))
        session.flush()
        assert sorted(session.scalars(select(BotOrder.id))) == [1, 2]  # the next id after the copy


def test_a_target_holding_data_is_refused_unless_replace(db_url, db_backend, fresh_db_url,
                                                         capsys):
    fill(db_url)
    target = fresh_db_url()
    with open_database(target, writer=True) as db, db.sessions.begin() as session:
        session.add(BotRun(mode="live", started_at=1.0, started_wall=1.0, speed=1.0, config={}))
    assert main(["db", "copy", "--from", db_url, "--to", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder db copy: the target ") and "already holds data (1 rows in 1 " \
        "tables, e.g. bot_run); give --replace" in err and len(err.strip().splitlines()) == 1
    with open_database(target, writer=False) as db, db.engine.connect() as connection:
        # bot_lease's one row is the migration's own (storage.transfer.SEEDED), never data
        assert {k: v for k, v in row_counts(connection).items() if v} == {"bot_run": 1,
                                                                           "bot_lease": 1}

    assert main(["db", "copy", "--from", db_url, "--to", target, "--replace"]) == 0
    with open_database(db_url, writer=False) as a, open_database(target, writer=False) as b:
        with a.engine.connect() as ca, b.engine.connect() as cb:
            assert row_counts(ca) == row_counts(cb)


@pytest.mark.parametrize("source, target, message", [
    ("nonsense", "sqlite:///{tmp}/t.db", "--from 'nonsense' is not a database URL"),
    ("sqlite:///{tmp}/missing.db", "sqlite:///{tmp}/t.db", "no database at "),
    ("sqlite:///{tmp}/a.db", "sqlite:///{tmp}/./a.db", "--from and --to are the same database"),
])
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, capsys, source, target, message):
    source, target = source.format(tmp=tmp_path), target.format(tmp=tmp_path)
    assert main(["db", "copy", "--from", source, "--to", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder db copy: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert sqlite_path(target) is None or not sqlite_path(target).exists()


def test_a_copy_of_a_database_being_written_is_the_source_as_the_copy_began(
        db_url, db_backend, fresh_db_url):
    # the bot writes an order and its event while the copy runs: after bot_order is copied,
    # before bot_order_event is read (on PostgreSQL at READ COMMITTED, the event would reach the
    # copy without its order, and bot_order's count would differ)
    fill(db_url)
    target = fresh_db_url(OTHER[db_backend])
    with open_database(db_url, writer=False) as a, a.engine.connect() as connection:
        before = row_counts(connection)
    written = []

    def bot_writes(table: str, copied: int) -> None:
        if table != "bot_order" or written:
            return
        with open_database(db_url, writer=True) as bot, bot.sessions.begin() as session:
            order = BotOrder(target="rigs", market="gigaspot", server_id=9, state="creating",
                             price=1.0, currency="CLORE-Blockchain", gpus=1, created_at=START + 9,
                             adopted=False, dry_run=False, lookups=0)
            session.add(order)
            session.flush()
            session.add(BotOrderEvent(order_ref=order.id, at=START + 9, kind="created"))
            written.append(order.id)

    with open_database(db_url, writer=False) as source, \
            open_database(target, writer=True) as copy:
        with source.engine.connect() as reader, copy.engine.begin() as writer:
            result = copy_tables(reader, writer, bot_writes)
    assert written == [2]
    assert result.rows == before and (before["bot_order"], before["bot_order_event"]) == (1, 1)
    with open_database(db_url, writer=False) as a, a.engine.connect() as connection:
        now = row_counts(connection)
        assert (now["bot_order"], now["bot_order_event"]) == (2, 2)  # written, after the copy began

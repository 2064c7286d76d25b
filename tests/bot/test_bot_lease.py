"""One bot per database (issue 9, item 6): a second bot refuses to start, naming the running
one; a stale lease (or one of a process that is gone) is taken over; a bot that lost its lease
stops trading."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bidder.cli import main
from bidder.lease import Lease, LeaseHeld
from bot_helpers import KEY, assert_books_agree, assert_one_per_server, make_config, new_bot, \
    spot_target
from storage.db import open_database
from storage.models import BotLease, BotRun

CONFIG = make_config(spot_target(count=1), bot={"lease_stale_after": 600.0})
OTHER_HOST = "elsewhere.example"


def other_bot_lease(database, clock, *, pid=4242, host=OTHER_HOST, alive=lambda _pid: True):
    return Lease(database.sessions, clock, stale_after=600.0, pid=pid, host=host, alive=alive)


def runs(database):
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(BotRun))


def test_a_second_bot_on_the_same_database_refuses_to_start(rig, database, clock):
    r = rig(CONFIG)
    first = r.start()
    r.run(120)
    with pytest.raises(LeaseHeld) as refused:
        new_bot(CONFIG, database, clock, r.faults.transport(), None,
                lease=other_bot_lease(database, clock))
    message = str(refused.value)
    assert f"run {first.run_id} (live, pid {os.getpid()} on " in message
    assert "another bot is running on this database" in message and "\n" not in message
    assert runs(database) == 1  # the refused start recorded no run
    r.run(600)  # the first bot goes on, undisturbed
    assert first.renew_lease() and not first.stop.is_set()
    assert_books_agree(r.market, database)
    assert_one_per_server(r.market)


def test_a_stale_lease_is_taken_over_and_the_old_bot_stops(rig, database, clock):
    r = rig(CONFIG)
    first = r.start()
    r.run(120)
    assert first.renew_lease()  # a heartbeat now
    clock.advance(599)
    with pytest.raises(LeaseHeld):
        new_bot(CONFIG, database, clock, r.faults.transport(), None,
                lease=other_bot_lease(database, clock))
    clock.advance(2)  # the first bot's heartbeat is now 601 s old
    second = new_bot(CONFIG, database, clock, r.faults.transport(), None,
                     lease=other_bot_lease(database, clock))
    try:
        result = first.decide_job()
        assert result.skipped == "this run lost its lease to another bot"
        assert first.stop.is_set()
        assert second.renew_lease()
        second.executor.reconcile()  # the bot that took over owns the books now
        assert_books_agree(r.market, database)
        assert_one_per_server(r.market)
    finally:
        second.close()


def test_status_names_the_lease_holder_and_shows_a_freed_lease(rig, database, clock):
    """A monitor (or a refused second bot's user) sees which process holds the database."""
    from bidder.status import collect, render

    r = rig(CONFIG)
    first = r.start()
    r.run(120)
    clock.advance(601)  # the first bot went silent: its lease is taken over
    second = new_bot(CONFIG, database, clock, r.faults.transport(), None,
                     lease=other_bot_lease(database, clock))
    try:
        clock.advance(30)
        with database.sessions() as session:
            status = collect(session, "db", clock)
        assert status.lease == {"run_id": second.run_id, "mode": "live", "pid": 4242,
                                "host": OTHER_HOST, "heartbeat_age": pytest.approx(30.0)}
        assert f"lease: held by run {second.run_id} (live, pid 4242 on {OTHER_HOST}), " \
               "last heartbeat 30 s ago" in render(status).splitlines()
        assert first.decide_job().skipped == "this run lost its lease to another bot"
        second.executor.reconcile()
        assert_books_agree(r.market, database)
        assert_one_per_server(r.market)
        second.finish("stopped by the test")  # a clean stop frees the lease
    finally:
        second.close()
    with database.sessions() as session:
        status = collect(session, "db", clock)
    assert status.lease is None
    assert "lease: free (no bot holds this database)" in render(status).splitlines()


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_at_once(database, clock):
    with database.sessions.begin() as session:
        other_bot_lease(database, clock, pid=999_999, host="here").acquire(session, 7, "live")
    taker = Lease(database.sessions, clock, stale_after=600.0, pid=1234, host="here",
                  alive=lambda pid: pid != 999_999)
    with database.sessions.begin() as session:
        taker.acquire(session, 8, "live")
    with database.sessions() as session:
        row = session.get_one(BotLease, "bot")
    assert (row.run_id, row.pid) == (8, 1234)


def test_a_clean_stop_frees_the_lease(rig, database, clock):
    r = rig(CONFIG)
    first = r.start()
    r.run(60)
    first.finish("stopped")
    second = new_bot(CONFIG, database, clock, r.faults.transport(), None,
                     lease=other_bot_lease(database, clock))
    try:
        assert second.renew_lease()
    finally:
        second.close()


def test_bidder_run_refuses_with_one_line_and_exit_2(tmp_path: Path, capsys, clock):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with open_database(url, writer=True) as database, database.sessions.begin() as session:
        other_bot_lease(database, clock, alive=lambda _pid: True).acquire(session, 3, "live")
        # its heartbeat is the manual clock's START: make it fresh in wall time
        session.get_one(BotLease, "bot").heartbeat_wall = time.time()
    config = tmp_path / "bot.toml"
    config.write_text(f'[api]\nkey = "{KEY}"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      f'[storage]\nurl = "{url}"\n'
                      '[[targets]]\nname = "s"\nmarket = "spot"\ncount = 1\n'
                      'max_price_per_gpu_day = 10.0\n')
    assert main(["run", "--config", str(config), "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bidder run: another bot is running on this database: run 3 (live, "
                              f"pid 4242 on {OTHER_HOST}, last heartbeat ")
    assert "Traceback" not in "\n".join(err)
    with open_database(url, writer=False) as database:
        assert runs(database) == 0


def test_bidder_run_sim_keeps_the_database_of_a_running_sim_bot(tmp_path: Path, capsys, clock,
                                                                monkeypatch):
    """``--sim`` starts its default database afresh, but never under a bot still running on it."""
    from bidder.commands.run import demo_config
    from bidder.sim.connect import sim_config

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    url = sim_config(demo_config()).storage_url("sim")
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with open_database(url, writer=True) as database, database.sessions.begin() as session:
        other_bot_lease(database, clock, alive=lambda _pid: True).acquire(session, 7, "sim")
        session.get_one(BotLease, "bot").heartbeat_wall = time.time()
    assert main(["run", "--sim", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bidder run: another bot is running on this database: run 7 (sim, ")
    assert err[-1].endswith("its simulation database is kept")
    with open_database(url, writer=False) as database, database.sessions() as session:
        assert session.get_one(BotLease, "bot").run_id == 7

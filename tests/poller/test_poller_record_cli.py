"""``bidder record``: options and errors, ``--sim --duration`` in-process, and a real ``bidder
record`` process against a loopback simulated market, stopped with SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bidder.cli import main
from bidder.clock import ScaledClock
from bidder.sim import SimMarket, SimOptions, serve
from storage.db import open_database
from storage.models import GigaspotSnapshot, MarketplaceListing, SpotPoll

KEY = "RecordKey-Ab12Cd34Ef56Gh78Ij90"
SMALL_SIM = "[sim]\nspot_servers = 12\ngigaspot_machines = 15\nspeed = 120\n"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("CLORE_API_KEY", raising=False)


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "bidder.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}')
    return path


def recorded(url: str) -> tuple[int, int, int]:
    with open_database(url, writer=False) as db, db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(table))
                     for table in (GigaspotSnapshot, SpotPoll, MarketplaceListing))


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["record", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("--config", "--duration SECONDS", "real seconds", "--sim", "simulated market",
                  "CLORE_API_KEY", "bidder-sim.db", "Ctrl-C"):
        assert words in out


def test_without_a_key_it_says_how_to_give_one(tmp_path, capsys):
    assert main(["record", "--config", str(write_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err and "CLORE_API_KEY" in err and "--sim" in err
    assert not (tmp_path / "data").exists()  # nothing was created


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_duration_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["record", "--sim", "--duration", value])
    assert exit_.value.code == 2
    assert f"expected a positive number of seconds, got '{value}'" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    config = write_config(tmp_path, f'[storage]\nurl = "sqlite:///{tmp_path}/file/x.db"\n')
    assert main(["record", "--config", str(config), "--sim"]) == 2
    assert "bidder record: cannot open the database" in capsys.readouterr().err


def test_sim_records_the_simulated_market_for_the_duration(tmp_path, capsys):
    config = write_config(tmp_path, SMALL_SIM)
    assert main(["record", "--config", str(config), "--sim", "--duration", "1"]) == 0
    database = tmp_path / "data" / "bidder-sim.db"
    snapshots, polls, listings = recorded(f"sqlite:///{database}")
    assert snapshots >= 1 and polls >= 1 and listings == 1
    captured = capsys.readouterr()
    assert "the simulated market (120x speed)" in captured.err
    assert captured.out.strip() == (f"bidder record: recorded into sqlite:///{database}: GigaSPOT "
                                    f"snapshots {snapshots}, spot polls {polls}, marketplace "
                                    f"listings {listings}")


def test_sim_uses_the_configured_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    config = write_config(tmp_path, f'{SMALL_SIM}[storage]\nurl = "{url}"\n')
    assert main(["record", "--config", str(config), "--sim", "--duration", "0.5"]) == 0
    assert recorded(url)[0] >= 1
    assert not (tmp_path / "data" / "bidder-sim.db").exists()


def test_sigterm_stops_a_real_recorder_cleanly(tmp_path):
    market = SimMarket(SimOptions(spot_servers=10, gigaspot_machines=12), ScaledClock(30))
    server = serve(market, port=0)
    try:
        config = write_config(tmp_path, f'[api]\nkey = "{KEY}"\nbase_url = "{server.url}"\n')
        process = subprocess.Popen(
            [sys.executable, "-m", "bidder", "record", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if k != "CLORE_API_KEY"})
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr])
        reader.start()
        seen = []
        try:
            while not (any("recorded GigaSPOT snapshot" in s for s in seen)
                       and any("recorded marketplace listing" in s for s in seen)):
                seen.append(lines.get(timeout=60))
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            out = process.stdout.read()
        finally:
            process.kill()
            reader.join()
        seen.extend(lines.queue)
    finally:
        server.shutdown()

    assert process.returncode == 0
    assert any("SIGTERM received" in line for line in seen)
    snapshots, _, listings = recorded(f"sqlite:///{tmp_path / 'data' / 'bidder.db'}")
    assert snapshots >= 1 and listings >= 1
    assert f"GigaSPOT snapshots {snapshots}" in out
    assert KEY not in out + "".join(seen)
    assert market.cdn_stats.with_auth_header == 0
    assert [p.name.startswith("ratelimit-") for p in (tmp_path / "data").glob("*.json")] == [True]

"""Database URLs as every command takes them: one that cannot be parsed is one line naming what
is wrong, with its password hidden (exit 2, no traceback); a ``~`` in a SQLite path is the home
folder for the writer, the bot's readers and ``bidder status`` alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidder.cli import main
from storage.db import open_database

BAD = "postgresql://bot:s3cret@db.example:abc/bidder"
TARGET = """
[[targets]]
name = "rigs"
market = "gigaspot"
count = 1
max_price_per_gpu_day = 80
oc = { pl = 150 }
"""


def config_with(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "bidder.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n{TARGET}')
    return config


@pytest.mark.parametrize("command", [
    ["run", "--dry-run"], ["status"], ["backtest", "--strategy", "outbid"], ["import", "{snap}"],
    ["optimize", "--target", "rigs", "--strategy", "outbid", "--space", "tick=0.01:1",
     "--trials", "1"],
])
def test_a_port_that_is_not_a_number_is_one_line_in_every_command(tmp_path, capsys, monkeypatch,
                                                                   command):
    monkeypatch.setenv("CLORE_API_KEY", "test-key")
    config = config_with(tmp_path, BAD)
    snap = tmp_path / "prod_x_1735176176.json"
    snap.write_text("{}")
    argv = [command[0], "--config", str(config), *(a.format(snap=snap) for a in command[1:])]
    assert main(argv) == 2
    assert_one_clear_line(capsys.readouterr().err, f"bidder {command[0]}: ")


@pytest.mark.parametrize("args", [
    ["db", "copy", "--from", BAD, "--to", "sqlite:///{tmp}/t.db"],
    ["db", "copy", "--from", "sqlite:///{tmp}/s.db", "--to", BAD],
    ["optimize", "--config", "{config}", "--target", "rigs", "--strategy", "outbid",
     "--space", "tick=0.01:1", "--trials", "1", "--storage", BAD],
])
def test_a_bad_port_in_an_option_is_one_line(tmp_path, capsys, args):
    config = config_with(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    argv = [a.format(tmp=tmp_path, config=config) for a in args]
    assert main(argv) == 2
    prefix = "bidder db copy: " if args[0] == "db" else "bidder optimize: "
    assert_one_clear_line(capsys.readouterr().err, prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bidder.toml"]  # nothing created


def assert_one_clear_line(err: str, prefix: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "its port 'abc' is not a number" in err and "db.example" in err
    assert "s3cret" not in err and "Traceback" not in err


def test_a_home_folder_path_is_the_same_file_for_writer_readers_and_status(tmp_path, capsys,
                                                                          monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    url = "sqlite:///~/bidder/data.db"
    with open_database(url, writer=True):
        pass
    assert (home / "bidder" / "data.db").is_file()
    assert list(elsewhere.iterdir()) == []  # no folder named '~' where the command ran
    with open_database(url, writer=False) as db, db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA database_list").fetchone()[2] == \
            str(home / "bidder" / "data.db")
    config = config_with(tmp_path, url)
    code = main(["status", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code != 2 and "no database" not in err, err
    assert out

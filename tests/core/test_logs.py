"""Log files: ``--log-file`` rotates by size, ``--log-format json`` writes one object per line, and
the key is redacted in both; a log file that cannot be written is a one-line error (exit 2)."""

from __future__ import annotations

import json
import logging

import pytest

from bidder import logs
from bidder.cli import build_parser, main
from bidder.config import ConfigError
from bidder.logs import setup_logging

KEY = "log-key-5d1c9a7e3b"


def test_a_log_file_rotates_by_size_and_keeps_backups(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 2_000)
    monkeypatch.setattr(logs, "LOG_FILE_BACKUPS", 2)
    path = tmp_path / "logs" / "bidder.log"
    setup_logging("INFO", [KEY], file=path)
    log = logging.getLogger("bidder.test")
    for i in range(100):
        log.info("line %03d with the key %s", i, KEY)
    for handler in logging.getLogger().handlers:
        handler.flush()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["bidder.log", "bidder.log.1", "bidder.log.2"]  # older ones dropped
    assert all(p.stat().st_size <= 2_000 for p in path.parent.iterdir())
    text = path.read_text()
    assert "line 099 with the key **********" in text and KEY not in text
    assert "line 000" not in "".join(p.read_text() for p in path.parent.iterdir())


def test_json_lines_for_log_shippers(tmp_path, capsys):
    path = tmp_path / "bidder.log"
    setup_logging("INFO", [KEY], file=path, fmt="json")
    log = logging.getLogger("bidder.test")
    log.warning("outbid on %d by %s", 1023, KEY)
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        log.exception("it failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = path.read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "bidder.test"
    assert first["message"] == "outbid on 1023 by **********"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "RuntimeError: boom **********" in second["exception"]
    assert capsys.readouterr().err.splitlines()[0] == lines[0]  # stderr gets the same
    assert KEY not in path.read_text()


def test_the_options_are_global_and_checked():
    args = build_parser(["status"]).parse_args(["--log-file", "x.log", "--log-format", "json", "status"])
    assert str(args.log_file) == "x.log" and args.log_format == "json"
    with pytest.raises(SystemExit):
        build_parser(["status"]).parse_args(["--log-format", "xml", "status"])


def test_an_unwritable_log_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"--log-file .*file/bidder.log: cannot write there"):
        setup_logging("INFO", file=blocker / "bidder.log")
    config = tmp_path / "a.toml"
    config.write_text("")
    assert main(["--log-file", str(blocker / "x.log"), "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder run: --log-file ") and "Traceback" not in err

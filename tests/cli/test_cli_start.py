"""The command line: it starts without the heavy libraries (a monitor calls ``bidder status``
every minute), and global options go before or after the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import bidder.cli as cli
from bidder import __version__
from bidder.cli import COMMANDS, build_parser, main

HEAVY = ("numpy", "sqlalchemy", "pydantic", "httpx", "apscheduler", "bidder.bot", "bidder.config",
         "storage.db", "bidder.backtest.runner")


def imported_by(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = (f"import sys\n{code}\n"
             f"import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["status", "--help"],
                                  ["--log-level", "DEBUG", "import", "--help"],
                                  ["run", "--help"], ["cancel-all", "--help"],
                                  ["record", "--help"]])
def test_help_and_version_import_nothing_heavy(argv):
    code = ("from bidder.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert imported_by(code) == []


def test_every_command_module_is_light_at_import():
    """Command modules import their heavy dependencies inside ``run`` (``add_arguments`` may,
    for the command's own --help): a new one that does not slows every command down."""
    code = "import importlib\n" + "".join(
        f"importlib.import_module({module!r})\n" for module in COMMANDS.values())
    assert imported_by(code) == []


def test_only_the_named_command_is_imported():
    code = ("from bidder.cli import build_parser\n"
            "build_parser(['status', '--json'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('bidder.commands.')))")
    probe = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True,
                           text=True, check=True).stdout
    assert probe.strip() == "['bidder.commands.status']"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"bidder {__version__}\n"


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name}" in out
    assert "--log-level" in out


@pytest.mark.parametrize("argv, level", [
    (["run"], "INFO"),
    (["--log-level", "DEBUG", "run"], "DEBUG"),
    (["run", "--log-level", "DEBUG"], "DEBUG"),
    (["run", "--sim", "--log-level", "WARNING", "--duration", "5"], "WARNING"),
    (["--log-level", "ERROR", "run", "--log-level", "DEBUG"], "DEBUG"),
    (["--log-level=ERROR", "status"], "ERROR"),
])
def test_global_options_go_before_or_after_the_command(argv, level):
    args = build_parser(argv).parse_args(argv)
    assert args.log_level == level
    assert args.command == ("status" if "status" in argv else "run")


def test_a_new_global_option_is_one_line(monkeypatch):
    monkeypatch.setattr(cli, "GLOBAL_OPTIONS", [
        *cli.GLOBAL_OPTIONS, (("--note",), {"default": None, "help": "a note"})])
    for argv in (["--note", "x", "status"], ["status", "--note", "x"]):
        args = build_parser(argv).parse_args(argv)
        assert args.note == "x" and args.command == "status"
    # a global option's value that is a command's name is not taken for the command
    args = build_parser(["--note", "run", "status"]).parse_args(["--note", "run", "status"])
    assert (args.note, args.command) == ("run", "status")
    assert build_parser(["status"]).parse_args(["status"]).note is None


def test_the_log_options_work_before_and_after_the_command():
    for argv in (["--log-file", "x.log", "--log-format", "json", "status"],
                 ["status", "--log-file", "x.log", "--log-format", "json"]):
        args = build_parser(argv).parse_args(argv)
        assert (str(args.log_file), args.log_format, args.command) == ("x.log", "json", "status")
    args = build_parser(["status"]).parse_args(["status"])
    assert (args.log_file, args.log_format) == (None, "text")


def test_an_unknown_command_or_option_exits_2(capsys):
    for argv in (["nosuch"], ["status", "--nosuch"], ["--log-level", "LOUD", "status"],
                 ["--log", "DEBUG", "status"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_status_needs_neither_numpy_nor_the_http_client(tmp_path):
    """``bidder status`` needs neither the strategies' numpy nor the API client's httpx: they
    would cost a monitor every call (nor SQLAlchemy and pydantic: tests/bot/test_bot_status_light.py)."""
    code = ("import os\n"
            f"os.environ['XDG_DATA_HOME'] = {str(tmp_path)!r}\n"
            "from bidder.cli import main\n"
            "assert main(['status']) == 2  # no database: reading it is what matters here\n")
    assert [m for m in imported_by(code) if m in ("numpy", "httpx", "apscheduler", "bidder.bot")] \
        == []

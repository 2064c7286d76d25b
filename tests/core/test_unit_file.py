"""The shipped systemd unit: notify with a watchdog, hardened, the key from an EnvironmentFile, and
an ExecStart the CLI accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

from bidder.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "docs" / "clore-bidder.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_is_notify_with_a_watchdog_and_hardened():
    s = settings()
    for key, value in {"Type": "notify", "ProtectSystem": "strict", "User": "clore-bidder",
                       "NoNewPrivileges": "true", "ProtectHome": "true", "PrivateTmp": "true",
                       "EnvironmentFile": "/etc/clore-bidder/env", "Restart": "on-failure",
                       "StateDirectory": "clore-bidder"}.items():
        assert s[key] == [value], key
    assert int(s["WatchdogSec"][0]) >= 3 * 30  # three default decide intervals
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0]  # the notify socket
    assert "CLORE_API_KEY" not in "".join(v for k, vs in s.items() if k != "EnvironmentFile"
                                          for v in vs)


def test_the_unit_runs_a_command_the_cli_accepts():
    argv = shlex.split(settings()["ExecStart"][0])
    assert argv[0].endswith("/bidder")
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert args.command == "run" and args.log_file is not None
    assert str(args.log_file).startswith("/var/log/clore-bidder/")  # LogsDirectory
    assert str(args.config).startswith("/etc/clore-bidder/")

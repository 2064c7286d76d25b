"""``bidder alerts test``: send one alert to every ``[alerts] urls`` entry and say how each went.

Light at import time (Apprise and the config are imported when the command runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = ("Alerts: 'bidder alerts test --config FILE' sends a test message to every [alerts] URL "
        "and reports each result (exit 1 if any failed).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    test = sub.add_parser("test", help="send a test alert to every URL and report each result",
                          description="Send a test alert to every [alerts] URL of the config and "
                                      "report each result; records nothing, changes no order.")
    test.add_argument("--config", type=Path, required=True, help="TOML config file")


def run(args: argparse.Namespace) -> int:
    import socket
    import time

    from bidder.alerts import send_apprise
    from bidder.config import load_config
    from bidder.logs import log_options, setup_logging

    config = load_config(args.config)
    key = config.api.resolved_key()
    setup_logging(args.log_level, [key.get_secret_value()] if key else [], **log_options(args))
    urls = [u.get_secret_value() for u in config.alerts.urls]
    if not urls:
        print(f"bidder alerts: no [alerts] urls in {args.config}: nothing to test",
              file=sys.stderr)
        return 2
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    results = send_apprise(urls, "clore-bidder test alert",
                           f"A test alert from clore-bidder on {socket.gethostname()} at {at} "
                           "UTC. If you read this, alerts reach you.", config.alerts.timeout)
    for r in results:
        print(f"{'ok    ' if r.ok else 'FAILED'}  {r.url}" + ("" if r.ok else f": {r.error}"))
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} of {len(results)} URLs accepted the test alert")
    return 1 if failed else 0

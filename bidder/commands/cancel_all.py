"""``bidder cancel-all``: the kill switch. Cancel every bid of ours, spot and GigaSPOT.

It first pulls the switch in the database (a running bot sees it before its next create and stops),
then reconciles with the exchange (``my_orders`` and the newest recorded snapshot, adopting orders
the database did not know), cancels every open order in journaled batches of 64, and reconciles
again, a few passes, until the exchange shows none. It shares the key's rate budget with a running
bot (the limiter's state file), so both stay within the limits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bidder.logs import log_options

if TYPE_CHECKING:
    from bidder.api import CloreClient
    from bidder.clock import Clock
    from bidder.config import Config
    from storage.db import Database

HELP = ("Cancel every bid of ours (spot and GigaSPOT), after reconciling with the exchange; a "
        "running bot stops trading. Exits non-zero if anything could not be cancelled.")

PASSES = 3
"""Reconcile-and-cancel rounds before giving up on orders that stay open."""


class CancelAllReport:
    """What cancel-all did (a plain class: ``dataclasses`` would cost every ``bidder --help``)."""

    __slots__ = ("cancelled", "left")

    def __init__(self) -> None:
        self.cancelled: list[tuple[int, int]] = []
        """(order id, server id)"""
        self.left: list[tuple[int | None, int]] = []
        """Orders still open (or whose create is still being looked for) at the end."""


def cancel_all(client: CloreClient, database: Database, clock: Clock, config: Config, *,
               passes: int = PASSES) -> CancelAllReport:
    """Reconcile and cancel until the exchange shows no order of ours (or ``passes`` run out).
    Raises ``CloreError`` when the exchange cannot be asked."""
    from bidder.executor import Executor
    from bidder.journal import Journal
    from bidder.orders import open_orders

    sessions = database.sessions
    executor = Executor(client, sessions, clock, config, journal=Journal(clock))
    report = CancelAllReport()
    for _ in range(passes):
        executor.reconciler.reconcile()
        with sessions() as session:
            live = [(o.order_id, o.server_id) for o in open_orders(session, dry_run=False)
                    if o.state == "live" and o.order_id is not None]
        if not live:
            break
        servers = dict(live)
        done = executor.cancel([(order_id, server, "cancel-all") for order_id, server in live])
        report.cancelled += [(order_id, servers[order_id]) for order_id in done.cancelled]
    executor.reconciler.reconcile()
    with sessions() as session:
        report.left = [(o.order_id, o.server_id) for o in open_orders(session, dry_run=False)]
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="TOML config file")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be cancelled; change nothing")


def _listing(client: CloreClient, database: Database) -> list[tuple[int | None, int, str]]:
    """(order id, server id, where seen) of every bid the exchange or the database holds."""
    from bidder.orders import open_orders
    from bidder.reconcile import seen_orders
    from storage.market_views import gigaspot_frame

    reply = client.my_orders()
    with database.sessions() as session:
        seen = seen_orders(reply, gigaspot_frame(session))
        known = open_orders(session, dry_run=False)
    ids = {s.order_id for s in seen}
    return [(s.order_id, s.server_id, s.source) for s in seen] + [
        (o.order_id, o.server_id, f"the database only ({o.state})") for o in known
        if o.order_id not in ids]


def run(args: argparse.Namespace) -> int:
    from bidder.alerts import announce_cancel_all
    from bidder.api import CloreClient, CloreError
    from bidder.clock import SystemClock
    from bidder.commands.run import logged_key
    from bidder.config import load_config
    from bidder.journal import ActivityLog
    from storage.db import open_database
    from storage.errors import StorageError
    from storage.models import BotHalt

    config = load_config(args.config)
    key = logged_key(config, "cancel-all", args.log_level, **log_options(args))
    if key is None:
        return 2
    try:
        database = open_database(config.storage_url(), writer=True)
    except StorageError as err:
        print(f"bidder cancel-all: {err}", file=sys.stderr)
        return 2
    clock, wall = SystemClock(), SystemClock()
    with database:
        activity = ActivityLog(database.sessions, clock, wall, [key.get_secret_value()])
        with CloreClient.from_config(config.api, clock=clock, observer=activity.observe,
                                     state_dir=config.resolved_data_dir()) as client:
            try:
                if args.dry_run:
                    return _list(client, database)
                with database.sessions.begin() as session:
                    session.add(BotHalt(wall_at=wall.now(), reason="bidder cancel-all"))
                report = cancel_all(client, database, clock, config)
            except CloreError as err:
                print(f"bidder cancel-all: the exchange could not be asked: {err}",
                      file=sys.stderr)
                if not args.dry_run:
                    announce_cancel_all(config.alerts, database.sessions, clock, wall,
                                        [key.get_secret_value()], [], [], str(err))
                return 1
            finally:
                activity.flush()
        announce_cancel_all(config.alerts, database.sessions, clock, wall,
                            [key.get_secret_value()], report.cancelled, report.left)
    return _print(report)


def _list(client: CloreClient, database: Database) -> int:
    orders = _listing(client, database)
    print(f"would cancel {len(orders)} orders" + (":" if orders else ""))
    for order_id, server_id, source in orders:
        print(f"  {order_id if order_id is not None else '(id not found yet)'} on server "
              f"{server_id} (seen in {source})")
    return 0


def _print(report: CancelAllReport) -> int:
    print(f"cancelled {len(report.cancelled)} orders" + (":" if report.cancelled else ""))
    for order_id, server_id in report.cancelled:
        print(f"  {order_id} on server {server_id}")
    if report.left:
        print(f"NOT cancelled: {len(report.left)} orders still open or in flight:")
        for order_id, server_id in report.left:
            print(f"  {order_id if order_id is not None else '(create not found yet)'} on server "
                  f"{server_id}")
        return 1
    print("no order of ours is open; a running bot has stopped trading (restart it to resume)")
    return 0

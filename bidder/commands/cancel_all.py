"""``bidder cancel-all``: the kill switch. Cancel every bid of ours, spot and GigaSPOT.

It first pulls the switch in the database (a running bot sees it before its next create and stops),
then, pass after pass: records the newest GigaSPOT snapshot, reconciles with the exchange
(``my_orders`` and that snapshot, adopting orders the database did not know, re-opening ones the
exchange still shows), and cancels every open order in journaled batches of 64. It says "nothing
open" only once ``my_orders`` and a snapshot taken after its last call agree that nothing of ours
is open and the database holds nothing in flight; until then it waits (``--wait``, with progress),
and exits non-zero naming every order it could not prove cancelled. It shares the key's rate
budget with a running bot (the limiter's state file), so both stay within the limits.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bidder.commands import positive_seconds
from bidder.logs import log_options

if TYPE_CHECKING:
    from bidder.api import CloreClient
    from bidder.clock import Clock
    from bidder.config import Config
    from storage.db import Database

HELP = ("Cancel every bid of ours (spot and GigaSPOT), after reconciling with the exchange; a "
        "running bot stops trading. Waits until the exchange shows nothing of ours open; exits "
        "non-zero naming every order it could not prove cancelled.")

WAIT = 600.0
"""Seconds to wait at most for the exchange to show every order of ours cancelled (creates in
flight need their grace, a GigaSPOT cancel a snapshot taken after it)."""
EVERY = 15.0
"""Seconds between two passes while waiting."""


@dataclass(slots=True)
class CancelAllReport:
    cancelled: list[tuple[int, int]] = field(default_factory=list)
    """(order id, server id)"""
    left: list[tuple[int | None, int]] = field(default_factory=list)
    """Orders not proven cancelled at the end: still open or in flight in the database, or
    cancelled without a snapshot taken after the cancel to confirm it."""
    passes: int = 0


def _needs_snapshots(database: Database, config: Config) -> bool:
    """GigaSPOT orders may be missing from ``my_orders``: a snapshot must confirm their end
    whenever GigaSPOT is in play (a target, an order, or a recorded snapshot)."""
    from sqlalchemy import func, select

    from storage.models import BotOrder, GigaspotSnapshot

    if any(t.market == "gigaspot" for t in config.targets):
        return True
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(GigaspotSnapshot)) != 0 or \
            session.scalar(select(func.count()).select_from(BotOrder)
                           .where(BotOrder.market == "gigaspot")) != 0


def cancel_all(client: CloreClient, database: Database, clock: Clock, config: Config, *,
               wait: float = WAIT, every: float = EVERY,
               sleep: Callable[[float], None] = time.sleep,
               progress: Callable[[str], None] = lambda _line: None) -> CancelAllReport:
    """Reconcile and cancel until ``my_orders`` and a snapshot newer than the last call agree that
    nothing of ours is open (or ``wait`` seconds pass). ``sleep`` waits between passes (tests pass
    the manual clock's). Raises ``CloreError`` when the exchange cannot be asked at all."""
    from sqlalchemy import func, select

    from bidder.api import CloreError
    from bidder.executor import Executor
    from bidder.journal import Journal
    from bidder.orders import open_orders
    from bidder.poller import MarketPoller
    from storage.models import GigaspotSnapshot

    sessions = database.sessions
    executor = Executor(client, sessions, clock, config, journal=Journal(clock))
    poller = MarketPoller(client, sessions, clock, config)
    snapshots = _needs_snapshots(database, config)
    report = CancelAllReport()
    started = clock.now()
    deadline = started + wait
    last_call: float | None = None
    unconfirmed: dict[int, int] = {}
    """GigaSPOT orders cancelled that no snapshot taken after our last call has confirmed yet."""
    failures = 0
    while True:
        report.passes += 1
        fresh = True
        if snapshots:
            poller.poll_gigaspot()
            with sessions() as session:
                newest = session.scalar(select(func.max(GigaspotSnapshot.time)))
            fresh = newest is not None and (last_call is None or newest > last_call)
        try:
            executor.reconciler.reconcile()
        except CloreError as err:
            failures += 1
            if failures >= 3 and report.passes == failures:
                raise  # the exchange cannot be asked at all
            progress(f"the exchange could not be asked ({err}); trying again")
        else:
            with sessions() as session:
                orders = open_orders(session, dry_run=False)
            live = [(o.order_id, o.server_id, o.market) for o in orders
                    if o.state == "live" and o.order_id is not None]
            if fresh:
                unconfirmed = {}  # the reconciliation just re-opened any the snapshot still shows
            if live:
                done = executor.cancel([(order_id, server, "cancel-all")
                                        for order_id, server, _ in live])
                last_call = clock.now()
                servers = {order_id: server for order_id, server, _ in live}
                report.cancelled += [(order_id, servers[order_id]) for order_id in done.cancelled
                                     if (order_id, servers[order_id]) not in report.cancelled]
                unconfirmed.update({order_id: servers[order_id] for order_id, _, market in live
                                    if market == "gigaspot" and order_id in done.cancelled})
                if clock.now() < deadline:
                    continue  # check at once what the exchange shows now
            elif not orders and not unconfirmed and fresh:
                report.left = []
                return report  # my_orders and a snapshot newer than our last call agree
            else:
                waiting = [(o.order_id, o.server_id) for o in orders] + \
                    list(unconfirmed.items())
                why = (f"{len(waiting)} orders not proven cancelled ({_ids(waiting)})" if waiting
                       else "no snapshot taken after our last call yet")
                progress(f"waiting: {why}; {max(0.0, deadline - clock.now()):.0f} s left")
        if clock.now() >= deadline:
            with sessions() as session:
                report.left = [(o.order_id, o.server_id)
                               for o in open_orders(session, dry_run=False)] + \
                    list(unconfirmed.items())
            left = {order_id for order_id, _ in report.left}
            report.cancelled = [c for c in report.cancelled if c[0] not in left]
            return report
        sleep(every)


def _ids(orders: list[tuple[int | None, int]]) -> str:
    return ", ".join(f"{order_id if order_id is not None else 'create'} on {server_id}"
                     for order_id, server_id in orders[:8]) + (", ..." if len(orders) > 8 else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="TOML config file")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be cancelled; change nothing (nor create or "
                             "upgrade a database)")
    parser.add_argument("--wait", type=positive_seconds, default=WAIT, metavar="S",
                        help="wait at most S seconds for the exchange to confirm every cancel "
                             f"(default {WAIT:.0f})")


def _listing(client: CloreClient, database: Database | None
             ) -> list[tuple[int | None, int, str]]:
    """(order id, server id, where seen) of every bid the exchange or the database holds."""
    from bidder.orders import open_orders
    from bidder.reconcile import seen_orders
    from storage.market_views import gigaspot_frame

    reply = client.my_orders()
    if database is None:
        return [(s.order_id, s.server_id, s.source) for s in seen_orders(reply, None)]
    with database.sessions() as session:
        seen = seen_orders(reply, gigaspot_frame(session))
        known = open_orders(session, dry_run=False)
    ids = {s.order_id for s in seen}
    return [(s.order_id, s.server_id, s.source) for s in seen] + [
        (o.order_id, o.server_id, f"the database only ({o.state})") for o in known
        if o.order_id not in ids]


def _dry_run(config: Config) -> int:
    """List what would be cancelled, reading the database only if it is there and current: a dry
    run creates, upgrades and writes nothing."""
    from bidder.api import CloreClient, CloreError
    from bidder.clock import SystemClock
    from storage.db import open_database
    from storage.errors import StorageError

    clock = SystemClock()
    try:
        database: Database | None = open_database(config.storage_url(), writer=False)
    except StorageError as err:
        print(f"bidder cancel-all: {err}; listing the exchange's orders only", file=sys.stderr)
        database = None
    try:
        with CloreClient.from_config(config.api, clock=clock,
                                     state_dir=config.resolved_data_dir()) as client:
            return _list(client, database)
    except CloreError as err:
        print(f"bidder cancel-all: the exchange could not be asked: {err}", file=sys.stderr)
        return 1
    finally:
        if database is not None:
            database.close()


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
    if args.dry_run:
        return _dry_run(config)
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
                with database.sessions.begin() as session:
                    session.add(BotHalt(wall_at=wall.now(), reason="bidder cancel-all"))
                report = cancel_all(client, database, clock, config, wait=args.wait,
                                    progress=lambda line: print(line, file=sys.stderr,
                                                                flush=True))
            except CloreError as err:
                print(f"bidder cancel-all: the exchange could not be asked: {err}",
                      file=sys.stderr)
                announce_cancel_all(config.alerts, database.sessions, clock, wall,
                                    [key.get_secret_value()], [], [], str(err))
                return 1
            finally:
                activity.flush()
        announce_cancel_all(config.alerts, database.sessions, clock, wall,
                            [key.get_secret_value()], report.cancelled, report.left)
    return _print(report)


def _list(client: CloreClient, database: Database | None) -> int:
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
        print(f"NOT cancelled: {len(report.left)} orders still open or in flight, or not yet "
              "shown cancelled by the exchange:")
        for order_id, server_id in report.left:
            print(f"  {order_id if order_id is not None else '(create not found yet)'} on server "
                  f"{server_id}")
        return 1
    print("no order of ours is open; a running bot has stopped trading (restart it to resume)")
    return 0

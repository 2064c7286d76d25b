"""A bot run, composed: config -> client, poller, journal, executor, engine, and their jobs.

``Bot`` wires one run over one database: it records the run (with the targets and budget it runs
with, so ``bidder status`` needs no config), reconciles with the exchange at start, and offers its
work as scheduler jobs that share the client and so one rate budget: the market polls (the poller's)
and the decide/execute cycle. Tests call the job methods directly on a manual clock; ``bidder run``
hands ``jobs()`` to ``bidder.scheduler.run_jobs``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import httpx
from sqlalchemy import func, select

from bidder.api import CallEvent, CloreClient
from bidder.clock import Clock, SystemClock
from bidder.config import Config, Mode
from bidder.engine import CycleResult, Engine, stale_after
from bidder.executor import Executor
from bidder.journal import SECRET_FIELDS, SECRET_MAPS, ActivityLog, Journal
from bidder.lease import Lease
from bidder.orders import SPEND_AT_STOP, add_event, close, newly_outbid, open_orders
from bidder.oversight import Oversight
from bidder.poller import GigaspotPollResult, MarketPoller, MarketplaceResult, SpotRoundResult
from bidder.reconcile import last_watched
from bidder.scheduler import JobSpec
from storage.db import Database
from storage.models import BotHalt, BotRun, MarketplaceListing

log = logging.getLogger(__name__)

CALL_HISTORY = 86_400.0
"""Seconds of API call attempts kept for ``bidder status``."""
LOG_HISTORY = 7 * 86_400.0
"""Seconds of logged problems kept."""
_GIGASPOT_CURRENT = ("recorded", "unchanged", "already_recorded")


def public_config(config: Config) -> dict[str, Any]:
    """What a run records about its config: everything that shapes its decisions (targets, budget,
    market rules, bot settings), so ``bidder backtest --replay-diff`` can replay them. No key, no
    SSH credentials, no tokens, no environment values."""
    targets = [t.model_dump(mode="json", exclude=set(SECRET_FIELDS | SECRET_MAPS))
               for t in config.targets]
    return {"targets": targets, "budget": config.budget.model_dump(mode="json"),
            "markets": config.markets.model_dump(mode="json"),
            "bot": config.bot.model_dump(mode="json"),
            "poller": config.poller.model_dump(mode="json")}


class MarketChecks:
    """When each market's data was last confirmed current by a poll in this run."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, market: str, at: float) -> None:
        with self._lock:
            self._at[market] = at

    def at(self, market: str) -> float | None:
        with self._lock:
            return self._at.get(market)


class Bot:
    """One run of the bot (``mode``: ``live``, ``dry-run`` or ``sim``) over ``database``."""

    def __init__(self, config: Config, database: Database, *, mode: Mode, clock: Clock,
                 wall: Clock | None = None, speed: float = 1.0,
                 transport: httpx.BaseTransport | None = None,
                 cdn_transport: httpx.BaseTransport | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 stop: threading.Event | None = None, lease: Lease | None = None,
                 oversight: dict[str, Any] | None = None) -> None:
        self.config = config
        self.database = database
        self.mode = mode
        self.clock = clock
        self.wall = wall if wall is not None else SystemClock()
        self.stop = stop if stop is not None else threading.Event()
        sessions = database.sessions
        key = config.api.resolved_key()
        self.activity = ActivityLog(sessions, clock, self.wall,
                                    secrets=[key.get_secret_value()] if key else [])
        self.client = CloreClient.from_config(config.api, clock=clock, transport=transport,
                                              cdn_transport=cdn_transport,
                                              observer=self._observe, state_dir=state_dir)
        self.checks = MarketChecks()
        self.poller = MarketPoller(self.client, sessions, clock, config,
                                   own_servers=self._own_spot_servers, stop=self.stop)
        self.journal = Journal(clock, dry_run=mode == "dry-run")
        self.executor = Executor(self.client, sessions, clock, config, journal=self.journal,
                                 stop=self.stop, halted=self.halted)
        self.lease = lease if lease is not None else Lease(
            sessions, self.wall, stale_after=config.bot.lease_stale_after)
        try:
            with sessions.begin() as session:
                self.executor.reconciler.down_since = last_watched(session)
                run = BotRun(mode=mode, started_at=clock.now(), started_wall=self.wall.now(),
                             speed=speed, pid=os.getpid(), config=public_config(config))
                session.add(run)
                session.flush()
                self.lease.acquire(session, run.id, mode)  # refused: no run is recorded
                self.run_id = run.id
                self._started_wall = run.started_wall
        except BaseException:
            self.client.close()
            raise
        self.oversight = Oversight(config, sessions, clock, self.wall, run_id=self.run_id,
                                   mode=mode, checked_at=self.checks.at,
                                   stale_after=lambda m: stale_after(config, m),
                                   secrets=[key.get_secret_value()] if key else [],
                                   **(oversight or {}))
        """Alerts, metrics, health, systemd (``oversight``: its test doubles: send, environ)."""
        self.engine = Engine(config, sessions, clock, self.executor, run_id=self.run_id,
                             mode=mode, wall=self.wall, checked_at=self.checks.at,
                             halted=self.halted, stop=self.stop)
        self._pruned_at = clock.now()
        self._listing_seen = False
        self._cycle = threading.Lock()
        """One cycle at a time: the decide job's, or one a poll triggers."""

    # --- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Record problems in the database from now on, settle what a previous run left in
        flight, and reconcile with the exchange."""
        self.activity.attach()
        self.oversight.start()
        log.info("bot run %d started (%s): %d targets", self.run_id, self.mode,
                 len(self.config.targets))
        try:
            self._recover()
            self.executor.reconcile()
        finally:
            self.activity.flush()

    def _recover(self) -> None:
        """Orders whose last call has no recorded outcome are ``unknown``: nothing touches them
        before a reconciliation. (A dry run's unsent virtual create simply failed.)"""
        now = self.clock.now()
        dry_run = self.journal.dry_run
        with self.database.sessions.begin() as session:
            lost = Journal.recover(session, now)
            for order in open_orders(session, dry_run=dry_run):
                if order.id not in lost:
                    continue
                if dry_run and order.state == "creating":
                    close(session, order, now, "the run ended before it was created",
                          state="failed")
                elif not dry_run:
                    order.state = "unknown"
                    add_event(session, order, "outcome_unknown", now, order.price,
                              call="lost when the previous run ended")
                    log.warning("order %s on server %d: the previous run ended during a call "
                                "about it; reconciling before anything touches it",
                                order.order_id, order.server_id)

    def finish(self, reason: str) -> None:
        """A clean end: record why, write what is buffered, let go of resources."""
        with self.database.sessions.begin() as session:
            run = session.get_one(BotRun, self.run_id)
            run.stopped_at = self.clock.now()
            run.stop_reason = reason
            # the orders left open live on into the next run, spending: this run's bill (its
            # replay-diff's) is their spend now, as of the last sync (None where my_orders never
            # gave one: GigaSPOT orders it does not list). A dry run's bill is its virtual fills'.
            if not self.journal.dry_run:
                for order in open_orders(session, dry_run=False):
                    add_event(session, order, SPEND_AT_STOP, run.stopped_at, spend=order.spend,
                              run_id=self.run_id)
        log.info("bot run %d stopped: %s", self.run_id, reason)
        self.oversight.stopped(reason)
        self.activity.flush()
        self.lease.release()
        self.close(alert_timeout=self.config.alerts.timeout + 1.0)

    def close(self, alert_timeout: float = 0.0) -> None:
        """Let go of resources without writing anything (also what a crash leaves); queued
        alerts get ``alert_timeout`` seconds."""
        self.activity.detach()
        self.client.close()
        self.oversight.close(alert_timeout)

    def halted(self) -> bool:
        """Whether ``bidder cancel-all`` has pulled the kill switch since this run started."""
        with self.database.sessions() as session:
            last = session.scalar(select(func.max(BotHalt.wall_at)))
        return last is not None and last >= self._started_wall

    # --- jobs ------------------------------------------------------------------------------------

    def jobs(self) -> list[JobSpec]:
        """The scheduler's jobs: polls for the markets the targets use, and the cycle."""
        poller, markets = self.config.poller, {t.market for t in self.config.targets}
        jobs = [JobSpec("decide", self.decide_job, self.config.bot.decide_interval)]
        if "gigaspot" in markets:
            jobs.append(JobSpec("poll_gigaspot", self.poll_gigaspot_job, poller.gigaspot_interval))
        if "spot" in markets:
            jobs.append(JobSpec("poll_marketplace", self.poll_marketplace_job,
                                poller.marketplace_interval))
            jobs.append(JobSpec("poll_spot", self.poll_spot_job, poller.spot_interval))
        return jobs

    def renew_lease(self) -> bool:
        """Heartbeat the one-bot lease; when another bot has taken it over (this one looked
        dead), stop at once rather than fight over the orders."""
        if self.lease.heartbeat():
            return True
        log.error("bot run %d lost its lease on the database to another bot; stopping",
                  self.run_id)
        self.stop.set()
        return False

    def decide_job(self) -> CycleResult:
        try:
            if not self.renew_lease():
                return CycleResult(0, "this run lost its lease to another bot")  # none recorded
            began = self.wall.now()
            with self._cycle:
                result = self.engine.cycle()
            self.oversight.after_cycle(result, self.wall.now() - began)
            now = self.clock.now()
            if now - self._pruned_at >= CALL_HISTORY / 24:
                self.activity.prune(now - CALL_HISTORY, now - LOG_HISTORY)
                self._pruned_at = now
            return result
        finally:
            self.activity.flush()

    def poll_gigaspot_job(self) -> GigaspotPollResult:
        try:
            result = self.poller.poll_gigaspot()
            if result.outcome in _GIGASPOT_CURRENT:
                self.checks.mark("gigaspot", self.clock.now())
            if result.outcome == "recorded":
                self._answer_outbids("gigaspot")
            return result
        finally:
            self.activity.flush()

    def poll_marketplace_job(self) -> MarketplaceResult:
        try:
            return self.poller.poll_marketplace()
        finally:
            self.activity.flush()

    def poll_spot_job(self) -> SpotRoundResult:
        try:
            result = self.poller.poll_spot_round()
            if result.polled and self._has_listing():
                self.checks.mark("spot", self.clock.now())
                self._answer_outbids("spot")
            return result
        finally:
            self.activity.flush()

    def _answer_outbids(self, market: str) -> None:
        """Run a cycle now when the data just recorded shows one of our orders outbid (unless a
        cycle is running): an outbid costs the time to the next poll, not also to the next cycle."""
        if self.mode == "dry-run":
            return
        with self.database.sessions() as session:
            if not newly_outbid(session, market):
                return
        if self._cycle.acquire(blocking=False):
            try:
                self.engine.cycle()
            finally:
                self._cycle.release()

    def _has_listing(self) -> bool:
        """Spot data needs a marketplace listing (GPU counts, models, countries) to be usable."""
        if not self._listing_seen:
            with self.database.sessions() as session:
                self._listing_seen = session.scalar(select(MarketplaceListing.id).limit(1)) \
                    is not None
        return self._listing_seen

    def _observe(self, event: CallEvent) -> None:
        self.activity.observe(event)
        self.oversight.observe_call(event)

    def _own_spot_servers(self) -> list[int]:
        with self.database.sessions() as session:
            return [o.server_id for o in open_orders(session, dry_run=self.mode == "dry-run")
                    if o.market == "spot"]

"""What a running bot tells people and machines about itself: alerts, metrics, health, systemd.

``Oversight`` is fed by the bot's hooks (every API call attempt, the end of every cycle, the stop)
and turns them into:

- alerts (``bidder.alerts``): ``capacity_short`` when a target stays below its count for more than
  ``capacity_grace`` (and ``capacity_restored``), ``budget_reached`` when the budget defers a create
  or raise, ``market_stale`` when a market's data is too old to decide on (and ``market_fresh``),
  ``key_rejected`` on API code 3, ``order_unresolved`` when an order stays in flight past
  ``unresolved_after``, ``foreign_order`` when an order of the key appears that nothing of
  the bot placed (``bidder.reconcile.APPEARED``: a person or another bot uses the key),
  ``rate_limited`` when the API answers "too fast" (code 5, HTTP 429), which the bot's own
  pacing never earns: something else uses the key without sharing its budget; ``bot_stopped``
  with the reason;
- metrics and the health check (``bidder.monitor``), served when ``[monitor] listen`` is set;
- sd_notify (``bidder.sdnotify``): ``READY=1`` after the first cycle, ``WATCHDOG=1`` and ``STATUS=``
  with each heartbeat, ``STOPPING=1``.

What the bot holds and spends is read from the database with ``bidder status``'s own code, so the
alerts, the metrics and ``bidder status`` never disagree. Times are the bot's clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bidder.alerts import Alerts, Sender, send_apprise
from bidder.clock import Clock
from bidder.config import Config, Mode
from bidder.monitor import Health, Metrics, MonitorServer
from bidder.book import APPEARED, OPEN_STATES
from bidder.sdnotify import Notifier
from bidder.status import Status, collect, fmt_time
from storage.models import BotOrder, BotOrderEvent

if TYPE_CHECKING:
    from bidder.api import CallEvent
    from bidder.engine import CycleResult

log = logging.getLogger(__name__)

KEY_REJECTED = 3
"""The API's code for an invalid key."""
UNRESOLVED = ("creating", "pending", "unknown")


def _short_currency(currency: str | None) -> str:
    return (currency or "").removesuffix("-Blockchain")


class Oversight:
    """Alerts, metrics, health and sd_notify of one bot run."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], clock: Clock, wall: Clock,
                 *, run_id: int, mode: Mode, checked_at: Callable[[str], float | None],
                 stale_after: Callable[[str], float], secrets: list[str],
                 send: Sender = send_apprise, environ: Mapping[str, str] | None = None) -> None:
        self._config = config
        self._sessions = sessions
        self._clock = clock
        self._wall = wall
        self._mode = mode
        self._checked_at = checked_at
        self._stale_after = stale_after
        self._markets = sorted({t.market for t in config.targets})
        self._started_at = clock.now()
        self.metrics = Metrics(self.market_ages)
        self.alerts = Alerts(config.alerts, sessions, clock, wall, run_id=run_id, secrets=secrets,
                             send=send, on_raise=lambda e: self.metrics.alerts.labels(e).inc())
        self.health = Health(wall, config.bot.heartbeat_stale_after)
        self.notifier = Notifier(environ)
        self.server: MonitorServer | None = None
        self._short_since: dict[str, float] = {}
        self._in_flight_since: dict[int, float] = {}
        self._stopped = False
        self._lock = threading.Lock()
        self._key_rejected: tuple[str, float] | None = None
        """(endpoint, when) of the last call refused for the key, until a call goes through."""
        self._too_fast: list[tuple[str, float, int | None, int | None]] = []
        """(endpoint, when, code, HTTP status) of the "too fast" replies since the last cycle."""
        self._foreign_told: set[int] = set()
        """Local ids of the orders ``foreign_order`` has told of."""

    # --- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the metrics if asked (raises ``MonitorError`` when the address cannot be had)."""
        address = self._config.monitor.address()
        if address is not None and self.server is None:
            self.server = MonitorServer(address, self.metrics, self.health)
        watchdog = self.notifier.watchdog_seconds
        if watchdog is not None and watchdog < 2 * self._config.bot.decide_interval / self._speed:
            log.warning("systemd's WatchdogSec (%g s) is shorter than two decide intervals "
                        "(%g s): a healthy bot may be restarted; raise WatchdogSec",
                        watchdog, 2 * self._config.bot.decide_interval / self._speed)

    @property
    def _speed(self) -> float:
        return self._config.sim.speed if self._mode == "sim" else 1.0

    def stopped(self, reason: str) -> None:
        """The bot stops: tell systemd, the health check and the people (once)."""
        if self._stopped:
            return
        self._stopped = True
        self.health.stopping(reason)
        self.notifier.stopping(f"stopping: {reason}")
        self.alerts.notify("bot_stopped", "bot", f"bot stopped ({self._mode}): {reason}",
                           f"The {self._mode} bot stopped at {fmt_time(self._clock.now())}: "
                           f"{reason}. It holds nothing new until restarted; its open orders stay "
                           "at the exchange (bidder cancel-all cancels them).",
                           level=logging.WARNING if reason.startswith("an error") else logging.INFO)

    def close(self, timeout: float = 0.0) -> None:
        """Stop serving; give queued alerts up to ``timeout`` seconds."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.alerts.close(timeout)

    # --- hooks -----------------------------------------------------------------------------------

    def observe_call(self, event: CallEvent) -> None:
        """Every API call attempt (from the client's thread): count it, note a refused key. The
        alert itself is raised after the cycle: this may run inside another job's call."""
        self.metrics.api_calls.labels(event.endpoint, event.outcome).inc()
        if event.cdn:
            return
        with self._lock:
            if event.outcome == "rate_limited":
                self._too_fast.append((event.endpoint, event.finished_at, event.code,
                                       event.http_status))
            if event.code == KEY_REJECTED:
                self._key_rejected = (event.endpoint, event.finished_at)
            elif event.outcome == "ok":
                self._key_rejected = None

    def after_cycle(self, result: CycleResult | None, seconds: float) -> None:
        """After each decide cycle (the heartbeat): metrics, alerts, health, systemd."""
        self.metrics.cycle_seconds.observe(seconds)
        now = self._clock.now()
        with self._sessions() as session:
            status = collect(session, "", self._wall, brief=True)
            in_flight = [(o.id, o.order_id, o.server_id, o.target, o.state, o.sent_at)
                         for o in session.scalars(select(BotOrder).where(
                             BotOrder.state.in_(UNRESOLVED),
                             BotOrder.dry_run.is_(self._mode == "dry-run")))]
            # the open unmanaged orders first (a few rows), then their events by the indexed
            # order_ref: not a scan of every event each cycle
            foreign = [(o.id, o.order_id, o.market, o.server_id, o.price, o.currency, at)
                       for o, at in session.execute(
                           select(BotOrder, BotOrderEvent.at)
                           .join(BotOrderEvent, BotOrderEvent.order_ref == BotOrder.id)
                           .where(BotOrder.target.is_(None), BotOrder.adopted.is_(True),
                                  BotOrder.state.in_(OPEN_STATES),
                                  BotOrderEvent.kind == APPEARED,
                                  BotOrderEvent.at >= self._started_at))
                       if o.id not in self._foreign_told]
        self._update_metrics(status)
        self._capacity(status, now)
        self._budget(status, result)
        self._stale_markets(now)
        self._unresolved(in_flight, now)
        self._foreign(foreign)
        self._rate_limited()
        self._key()
        summary = self.summary(status)
        self.health.beat({"summary": summary, "skipped": result.skipped if result else None})
        self.notifier.heartbeat(summary)

    # --- what to say -----------------------------------------------------------------------------

    def market_ages(self) -> dict[str, float | None]:
        now = self._clock.now()
        ages: dict[str, float | None] = {}
        for market in self._markets:
            checked = self._checked_at(market)
            ages[market] = None if checked is None else max(0.0, now - checked)
        return ages

    @staticmethod
    def summary(status: Status) -> str:
        """One line: what is held against what is wanted, and the spend."""
        held = ", ".join(f"{t.name} {t.held}/{t.wanted} {t.unit}" for t in status.targets)
        spend = "?" if status.spend_per_day is None else f"{status.spend_per_day:.2f}"
        budget = "" if status.budget_per_day is None else f" of {status.budget_per_day:g}"
        return f"holding {held or 'nothing'}; spend {spend}{budget} " \
               f"{_short_currency(status.budget_currency)}/day"

    def _rate_limited(self) -> None:
        with self._lock:
            replies, self._too_fast = self._too_fast, []
        if not replies:
            self.alerts.solved("rate_limited", "api")
            return
        endpoint, at, code, http = replies[-1]
        said = f"code {code}" if code is not None else f"HTTP {http}"
        self.alerts.problem(
            "rate_limited", "api", "the exchange says the bot calls too fast",
            f"The API answered \"too fast\" {len(replies)} time(s) since the last cycle, the "
            f"last to {endpoint} at {fmt_time(at)} ({said}). The bot keeps its own calls within "
            "the published limits (one budget for every process of this machine that uses the "
            "key with the same data directory), so something else uses the key without sharing "
            "it: a second bot or a script elsewhere, or the exchange's limits are stricter than "
            "published. Every call of the key waits as told; the bot goes on.")

    def _key(self) -> None:
        with self._lock:
            rejected = self._key_rejected
        if rejected is None:
            self.alerts.solved("key_rejected", "api")
            return
        endpoint, at = rejected
        self.alerts.problem(
            "key_rejected", "api", "the API key was rejected",
            f"The API answered code 3 (invalid key) to {endpoint} at {fmt_time(at)}. Nothing can "
            "be read or changed until the key (CLORE_API_KEY or [api] key) is fixed and the bot "
            "restarted.")

    def _update_metrics(self, status: Status) -> None:
        m = self.metrics
        for t in status.targets:
            m.target_held.labels(t.name, t.unit).set(t.held)
            m.target_wanted.labels(t.name, t.unit).set(t.wanted)
        m.order_price.clear()
        for o in status.orders:
            m.order_price.labels(o.target or "(unmanaged)",
                                 str(o.order_id) if o.order_id is not None else f"local-{o.local_id}",
                                 str(o.server_id), o.currency).set(o.price)
        currency = status.budget_currency or ""
        m.spend_per_day.clear()
        if status.spend_per_day is not None:
            m.spend_per_day.labels(currency).set(status.spend_per_day)
        m.budget_per_day.clear()
        if status.budget_per_day is not None:
            m.budget_per_day.labels(currency).set(status.budget_per_day)

    def _capacity(self, status: Status, now: float) -> None:
        grace = self._config.alerts.capacity_grace
        for t in status.targets:
            what = f"{t.held} of {t.wanted} {t.unit}"
            if t.held < t.wanted:
                since = self._short_since.setdefault(t.name, now)
                if now - since >= grace:
                    self.alerts.problem(
                        "capacity_short", t.name, f"{t.name}: holding {what}",
                        f"Target {t.name} ({t.market}) holds {what} since "
                        f"{fmt_time(since)} ({now - since:.0f} s): {t.orders} orders open. "
                        "Its cap, the budget or the market leaves it short; `bidder status` "
                        "says what it waits for.")
            else:
                self._short_since.pop(t.name, None)
                self.alerts.solved("capacity_short", t.name, then=(
                    "capacity_restored", f"{t.name}: holding {what} again",
                    f"Target {t.name} ({t.market}) holds {what} again at {fmt_time(now)}."))

    def _budget(self, status: Status, result: CycleResult | None) -> None:
        if result is None or result.plan is None:
            return  # a skipped cycle says nothing about the budget
        budget = f"{status.budget_per_day:g}" if status.budget_per_day is not None else "?"
        spend = f"{status.spend_per_day:.2f}" if status.spend_per_day is not None else "?"
        currency = _short_currency(status.budget_currency)
        for target in self._config.targets:
            held = [d for d in result.plan.deferred
                    if d.target == target.name and d.reason == "budget"]
            if not held:
                self.alerts.solved("budget_reached", target.name)
                continue
            wishes = ", ".join(f"server {d.server_id} at {d.wanted_price:.6g}"
                               for d in held[:5] if d.wanted_price is not None)
            more = f" and {len(held) - 5} more" if len(held) > 5 else ""
            self.alerts.problem(
                "budget_reached", target.name, f"{target.name}: the daily budget is reached",
                f"Target {target.name} wants {wishes}{more} "
                f"{_short_currency(target.currency)}/day, deferred by the budget: spend {spend} "
                f"of {budget} {currency}/day (all bids as if winning, fees included).")

    def _stale_markets(self, now: float) -> None:
        for market in self._markets:
            checked = self._checked_at(market)
            since = checked if checked is not None else self._started_at
            limit = self._stale_after(market)
            if now - since > limit:
                last = "never in this run" if checked is None else \
                    f"{now - checked:.0f} s ago, at {fmt_time(checked)}"
                self.alerts.problem(
                    "market_stale", market, f"{market} market data is stale",
                    f"The {market} data was last polled {last} (limit {limit:g} s): the bot "
                    f"does not decide {market} targets until it is fresh; their orders stay as "
                    "they are.")
            else:
                self.alerts.solved("market_stale", market, then=(
                    "market_fresh", f"{market} market data is fresh again",
                    f"The {market} data was polled at {fmt_time(checked)}; deciding again."))

    def _foreign(self, orders: list[tuple[int, int | None, str, int, float, str, float]]) -> None:
        for local_id, order_id, market, server_id, price, currency, at in orders:
            self._foreign_told.add(local_id)
            self.alerts.notify(
                "foreign_order", str(local_id),
                f"{market} order {order_id} on server {server_id} was placed by something else",
                f"A {market} order of this API key, {order_id} on server {server_id} at {price:g} "
                f"{_short_currency(currency)}/day, was found at the exchange at {fmt_time(at)} "
                "(placed while the bot ran, or while no bot ran), and the bot did not place it: "
                "a person or another bot uses the key. Two bots on one key fight over orders "
                "and together break the rate limits: stop one. The bot leaves this order alone (unmanaged: it keeps away "
                "from its server and counts it against the budget); bidder cancel-all cancels it.")

    def _unresolved(self, in_flight: list[tuple[int, int | None, int, str | None, str,
                                                float | None]], now: float) -> None:
        limit = self._config.alerts.unresolved_after
        seen = set()
        for local_id, order_id, server_id, target, state, sent_at in in_flight:
            seen.add(local_id)
            since = self._in_flight_since.setdefault(
                local_id, sent_at if sent_at is not None and state != "unknown" else now)
            if now - since >= limit:
                name = f"order {order_id}" if order_id is not None else f"the create (local " \
                                                                        f"{local_id})"
                self.alerts.problem(
                    "order_unresolved", str(local_id),
                    f"{name} on server {server_id}: outcome unknown",
                    f"The outcome of the last call about {name} on server {server_id} (target "
                    f"{target or 'unmanaged'}) is still {state} after {now - since:.0f} s. "
                    "Nothing touches it until reconciliation with the exchange settles it.")
        for local_id in set(self._in_flight_since) - seen:
            del self._in_flight_since[local_id]
            self.alerts.solved("order_unresolved", str(local_id))

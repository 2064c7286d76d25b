"""Alerts to people: raised by the bot, deduplicated per episode, recorded, sent off the trading path.

``Alerts.problem`` opens (or continues) an episode, keyed by event and subject (a target, a market,
an order): the first call sends, later ones stay quiet until ``repeat_after`` seconds of the bot's
clock have passed, then send a reminder. ``Alerts.solved`` ends the episode (and may say so);
``Alerts.notify`` sends a one-off (the bot stopped, ``cancel-all`` ran).

Every alert is written to ``bot_alert`` where it is raised (``bidder status`` lists them), then
handed to a sender thread through a bounded queue: a slow, hanging or failing URL delays only other
alerts, never a cycle. A full queue drops the alert (recorded as ``dropped``) rather than block.
Sending goes through Apprise (one URL syntax for Telegram, Discord, Slack, e-mail, ntfy, webhooks);
it is imported only when something is sent. URLs carry tokens: they are shown only in Apprise's
privacy form, and the API key is scrubbed from every title and body.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bidder.clock import Clock
from bidder.logs import REDACTED

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from bidder.config import AlertsConfig

log = logging.getLogger(__name__)

EVENTS = ("capacity_short", "capacity_restored", "budget_reached", "market_stale",
          "market_fresh", "key_rejected", "order_unresolved", "bot_stopped", "cancel_all", "test")
"""Every event an alert may carry (``bidder_alerts_total{event}``)."""
QUEUE_SIZE = 100
"""Alerts waiting for the sender thread at most; more are dropped (and recorded as dropped)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one alert at one URL."""

    url: str
    """The URL in Apprise's privacy form (tokens elided), never the URL itself."""
    ok: bool
    error: str | None = None


Sender = Callable[[Sequence[str], str, str, float], list[Delivery]]
"""``(urls, title, body, timeout) -> one Delivery per URL``."""


def shown_url(url: str) -> str:
    """A URL fit to print: Apprise's privacy form without its query, else the scheme alone."""
    import apprise  # heavy: only when something is sent or shown

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return url.split("://", 1)[0] + "://" + REDACTED
    return str(plugin.url(privacy=True)).split("?", 1)[0]


def send_apprise(urls: Sequence[str], title: str, body: str, timeout: float) -> list[Delivery]:
    """Send one message to each URL through Apprise, one by one, and say how each went."""
    import apprise  # heavy: only when something is sent

    out: list[Delivery] = []
    for url in urls:
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            out.append(Delivery(shown_url(url), False, "not a URL Apprise knows"))
            continue
        plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout
        shown = str(plugin.url(privacy=True)).split("?", 1)[0]
        try:
            ok = bool(plugin.notify(body=body, title=title))
        except Exception as err:  # a plugin's bug must not end the sender thread
            out.append(Delivery(shown, False, type(err).__name__))
            continue
        out.append(Delivery(shown, ok, None if ok else "not accepted (unreachable or refused)"))
    return out


@dataclass(frozen=True, slots=True)
class _Job:
    row_id: int | None
    title: str
    body: str


class Alerts:
    """The alerts of one process (a bot run, ``cancel-all``, ``alerts test``).

    ``clock`` is the bot's (simulated in a simulation): alert times and ``repeat_after`` use it.
    ``on_raise(event)`` is told of every alert raised (the metrics count them).
    """

    def __init__(self, config: AlertsConfig, sessions: sessionmaker[Session], clock: Clock,
                 wall: Clock, *, run_id: int | None = None, secrets: Iterable[str] = (),
                 send: Sender = send_apprise, on_raise: Callable[[str], None] | None = None,
                 queue_size: int = QUEUE_SIZE) -> None:
        self._urls = [u.get_secret_value() for u in config.urls]
        self._repeat_after = config.repeat_after
        self._timeout = config.timeout
        self._sessions = sessions
        self._clock = clock
        self._wall = wall
        self._run_id = run_id
        self._secrets = [s for s in secrets if s]
        self._send = send
        self._on_raise = on_raise
        self._episodes: dict[tuple[str, str], float] = {}
        """(event, key) -> when it was last sent."""
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    # --- raising ---------------------------------------------------------------------------------

    def problem(self, event: str, key: str, title: str, body: str) -> bool:
        """A problem goes on: alert once per episode, then every ``repeat_after``. True if sent."""
        now = self._clock.now()
        with self._lock:
            last = self._episodes.get((event, key))
            if last is not None and now - last < self._repeat_after:
                return False
            self._episodes[(event, key)] = now
        self._raise(event, key, title, body, reminder=last is not None, level=logging.WARNING)
        return True

    def active(self, event: str, key: str) -> bool:
        with self._lock:
            return (event, key) in self._episodes

    def solved(self, event: str, key: str, *, then: tuple[str, str, str] | None = None) -> bool:
        """End an episode if one is open; ``then`` = (event, title, body) to say so. True if one
        was open."""
        with self._lock:
            was = self._episodes.pop((event, key), None) is not None
        if was and then is not None:
            self._raise(then[0], key, then[1], then[2], reminder=False, level=logging.INFO)
        return was

    def notify(self, event: str, key: str, title: str, body: str,
               level: int = logging.WARNING) -> None:
        """A one-off alert (no episode); ``level``: of its log line (WARNING lines are also kept
        among ``bidder status``'s last problems)."""
        self._raise(event, key, title, body, reminder=False, level=level)

    def _raise(self, event: str, key: str, title: str, body: str, *, reminder: bool,
               level: int) -> None:
        from storage.models import BotAlert  # sqlalchemy models: not at import time

        title, body = self._scrub(("reminder: " if reminder else "") + title), self._scrub(body)
        log.log(level, "alert %s: %s: %s", event, title, body)
        delivery = "queued" if self._urls else "no urls"
        row_id: int | None = None
        try:
            with self._sessions.begin() as session:
                row = BotAlert(run_id=self._run_id, at=self._clock.now(),
                               wall_at=self._wall.now(), event=event, key=key, title=title,
                               body=body, reminder=reminder, delivery=delivery)
                session.add(row)
                session.flush()
                row_id = row.id
        except Exception as err:  # the database's trouble must not swallow the alert too
            log.error("alert %s not recorded (%s: %s); sending it anyway", event,
                      type(err).__name__, " ".join(str(err).split()))
        if self._on_raise is not None:
            self._on_raise(event)
        if self._urls:
            self._enqueue(_Job(row_id, title, body))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    # --- sending ---------------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="bidder-alerts",
                                                daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            log.warning("alert not sent: %d alerts already wait for the sender (a URL hangs?)",
                        self._queue.maxsize)
            self._delivered(job.row_id, "dropped: the send queue was full")

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._deliver(job)
            except Exception:  # never let one alert end the sender
                log.exception("sending an alert failed")
            finally:
                self._queue.task_done()

    def _deliver(self, job: _Job) -> None:
        results = self._send(self._urls, job.title, job.body, self._timeout)
        failed = [r for r in results if not r.ok]
        for r in failed:
            log.warning("alert %r not delivered to %s: %s", job.title, r.url, r.error)
        self._delivered(job.row_id, "sent" if not failed else "failed: " + "; ".join(
            f"{r.url} ({r.error})" for r in failed))

    def _delivered(self, row_id: int | None, delivery: str) -> None:
        from sqlalchemy import update

        from storage.models import BotAlert

        if row_id is None:
            return
        with self._sessions.begin() as session:
            session.execute(update(BotAlert).where(BotAlert.id == row_id)
                            .values(delivery=self._scrub(delivery)))

    def wait_sent(self, timeout: float) -> bool:
        """Wait up to ``timeout`` real seconds until every queued alert was tried; True if so."""
        end = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 0.0) -> None:
        """Give queued alerts up to ``timeout`` real seconds, then stop the sender (a hanging
        URL is abandoned: the thread is a daemon)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        if not self.wait_sent(timeout):
            log.warning("%d alerts were still being sent at exit; abandoned",
                        self._queue.unfinished_tasks)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        thread.join(0.5 if timeout else 0.0)


def announce_cancel_all(config: AlertsConfig, sessions: sessionmaker[Session], clock: Clock,
                        wall: Clock, secrets: Iterable[str], cancelled: Sequence[tuple[int, int]],
                        left: Sequence[tuple[int | None, int]], error: str | None = None) -> None:
    """The ``cancel_all`` alert: what ``bidder cancel-all`` cancelled and what it could not; sent
    before the command returns (it waits up to ``timeout`` for the URLs)."""
    alerts = Alerts(config, sessions, clock, wall, secrets=secrets)
    done = ", ".join(f"{order} on server {server}" for order, server in cancelled[:20])
    more = f" and {len(cancelled) - 20} more" if len(cancelled) > 20 else ""
    still = ", ".join(f"{order if order is not None else '(create not found yet)'} on server "
                      f"{server}" for order, server in left)
    if error is not None:
        title = "cancel-all could not ask the exchange"
    elif left:
        title = f"cancel-all: {len(left)} orders NOT cancelled"
    else:
        title = f"cancel-all cancelled {len(cancelled)} orders"
    body = (f"bidder cancel-all at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(clock.now()))}"
            f" UTC: cancelled {len(cancelled)} orders{': ' + done + more if done else ''}. "
            + (f"Still open or in flight: {still}. " if left else "")
            + (f"The exchange could not be asked: {error}. " if error else "")
            + "A running bot stops trading.")
    alerts.notify("cancel_all", "cancel-all", title, body,
                  level=logging.WARNING if left or error else logging.INFO)
    alerts.close(config.timeout + 1.0)

"""The write-ahead journal of mutating calls, and the record of every API call and logged problem.

``Journal``: a mutating call is written (status ``pending``) in the same transaction as the order
rows it is about, and committed **before** it is sent; its outcome is written after, again with the
order rows it changes. A process killed in between leaves ``pending`` rows behind: their outcome is
unknown, and reconciliation with the exchange settles it before anything is retried.

``ActivityLog``: the client's ``CallEvent``s (every attempt of every call) and the WARNING and ERROR
records logged while the bot runs, buffered and written by the jobs between calls, for ``bidder
status`` ("API calls in the last hour", "the last errors"). Secrets never reach the database:
request bodies are redacted here and log records pass the same filter as the console.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from bidder.api import CallEvent, CloreError, MissingApiKey, OutcomeUnknown, RequestNotSent
from bidder.api.errors import ApiError
from bidder.clock import Clock
from bidder.logs import REDACTED, RedactingFilter
from storage.models import ApiCall, ApiJournal, BotLog

R = TypeVar("R")

JournalStatus = Literal["pending", "ok", "error", "unknown", "not_sent", "dry_run"]

SECRET_FIELDS = frozenset({"ssh_password", "ssh_key", "jupyter_token"})
"""Request fields whose values never reach the database."""
SECRET_MAPS = frozenset({"env"})
"""Request fields whose values (not keys) never reach the database: env vars hold wallets, tokens."""


def redact(body: Any) -> Any:
    """A copy of a request body with secret values replaced by ``**********``."""
    if isinstance(body, list):
        return [redact(item) for item in body]
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in SECRET_FIELDS and value is not None:
            out[key] = REDACTED
        elif key in SECRET_MAPS and isinstance(value, dict):
            out[key] = dict.fromkeys(value, REDACTED)
        else:
            out[key] = redact(value)
    return out


@dataclass(frozen=True, slots=True)
class Sent(Generic[R]):
    """What became of one journaled call."""

    entry_id: int
    status: JournalStatus
    reply: R | None = None
    error: Exception | None = None
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _reply_json(reply: object) -> Any:
    return reply.model_dump(mode="json") if isinstance(reply, BaseModel) else None


class Journal:
    """Writes mutating calls ahead of sending them, and their outcomes after.

    ``write`` adds the ``pending`` row to the caller's transaction (commit it before calling
    ``send``); ``send`` performs the call (or, in a dry run, does not) and classifies the outcome;
    ``record`` writes it into the caller's next transaction. ``cycle_id`` tags entries with the
    decide cycle that planned them.
    """

    def __init__(self, clock: Clock, *, dry_run: bool = False) -> None:
        self._clock = clock
        self.dry_run = dry_run
        self.cycle_id: int | None = None

    def write(self, session: Session, endpoint: str, request: Any, *, orders: Sequence[int],
              servers: Sequence[int]) -> ApiJournal:
        entry = ApiJournal(at=self._clock.now(), cycle_id=self.cycle_id, endpoint=endpoint,
                           orders=list(orders), servers=[int(s) for s in servers],
                           request=redact(request), status="pending")
        session.add(entry)
        session.flush()
        return entry

    def send(self, entry: ApiJournal, call: Callable[[], R]) -> Sent[R]:
        """Carry out the journaled call (not in a dry run) and say how it ended. Never raises for
        the exchange's answers; an interrupt (``BaseException``) leaves the entry ``pending``."""
        if self.dry_run:
            return Sent(entry.id, "dry_run", finished_at=self._clock.now())
        try:
            reply = call()
        except OutcomeUnknown as err:
            return Sent(entry.id, "unknown", error=err, finished_at=self._clock.now())
        except (RequestNotSent, MissingApiKey, ValueError) as err:
            return Sent(entry.id, "not_sent", error=err, finished_at=self._clock.now())
        except CloreError as err:
            return Sent(entry.id, "error", error=err, finished_at=self._clock.now())
        return Sent(entry.id, "ok", reply=reply, finished_at=self._clock.now())

    @staticmethod
    def recover(session: Session, now: float) -> set[int]:
        """After a restart: calls written but never given an outcome (the process died in
        between) become ``unknown``; returns the local ids of the orders they concern."""
        lost: set[int] = set()
        for entry in session.scalars(select(ApiJournal).where(ApiJournal.status == "pending")):
            entry.status = "unknown"
            entry.finished_at = now
            entry.error = "the process ended before the outcome was recorded"
            lost.update(entry.orders)
        return lost

    @staticmethod
    def record(session: Session, sent: Sent[Any]) -> None:
        entry = session.get_one(ApiJournal, sent.entry_id)
        entry.status = sent.status
        entry.finished_at = sent.finished_at
        if isinstance(sent.error, ApiError):
            entry.reply = sent.error.reply
        else:
            entry.reply = _reply_json(sent.reply)
        entry.error = str(sent.error) if sent.error is not None else None


class ActivityLog:
    """Buffers call events and problem log records from any thread; ``flush`` writes them.

    Attach it to a logger (``attach``) for the life of a bot; ``observe`` is the client's observer.
    """

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, wall: Clock,
                 secrets: Iterable[str] = ()) -> None:
        self._sessions = sessions
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._calls: list[ApiCall] = []
        self._logs: list[BotLog] = []
        self._handler = _BufferHandler(self)
        self._handler.addFilter(RedactingFilter(secrets))
        self._logger: logging.Logger | None = None

    def observe(self, event: CallEvent) -> None:
        row = ApiCall(endpoint=event.endpoint, priority=int(event.priority),
                      started_at=event.started_at, finished_at=event.finished_at,
                      attempt=event.attempt, outcome=event.outcome, code=event.code,
                      error=event.error, http_status=event.http_status, cdn=event.cdn)
        with self._lock:
            self._calls.append(row)

    def note(self, record: logging.LogRecord) -> None:
        row = BotLog(at=self._clock.now(), wall_at=self._wall.now(), level=record.levelname,
                     source=record.name, message=record.getMessage())
        with self._lock:
            self._logs.append(row)

    def attach(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger()
        self._logger.addHandler(self._handler)

    def detach(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self._handler)
            self._logger = None

    def flush(self) -> None:
        with self._lock:
            rows: list[ApiCall | BotLog] = [*self._calls, *self._logs]
            self._calls, self._logs = [], []
        if rows:
            with self._sessions.begin() as session:
                session.add_all(rows)

    def prune(self, calls_before: float, logs_before: float) -> None:
        """Forget call attempts and logged problems older than these times (status shows the
        last hour's calls and the last problems)."""
        with self._sessions.begin() as session:
            session.execute(delete(ApiCall).where(ApiCall.started_at < calls_before))
            session.execute(delete(BotLog).where(BotLog.at < logs_before))


class _BufferHandler(logging.Handler):
    def __init__(self, log: ActivityLog) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.note(record)

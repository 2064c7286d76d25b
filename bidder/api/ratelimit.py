"""Rate limits as data, and one limiter per API key that waits instead of being refused.

The table says which limits each endpoint consumes (every endpoint consumes ``all``;
``create_order`` also consumes ``create_order``). ``RateLimiter.acquire`` blocks, through the
injected clock, until every limit an endpoint consumes allows one more call, serving waiting
callers by priority (cancels before edits before creates before polls).

The exchange counts a request when it *arrives*, and arrival lags sending by a network delay that
varies (a loaded machine, a slow route): two sends a period apart may arrive closer. So a call's
slot is held while it is in flight (``hold``: at most the request timeout) and, once its reply
is in (``done``), counts from then: the exchange saw the request no later than it replied, so the
next send a period after the reply arrives a period after it, whatever the delays (a call that
timed out without a reply, ``CloreClient._slot_end``, counts from a timeout later). The send times live in a
state backend: in memory for one process, or in a small ``flock``-guarded file so that every
process using the key (the bot and a ``bidder cancel-all`` beside it) shares one budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Protocol, TypeVar

from bidder.clock import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")

ALL = "all"
CREATE_ORDER = "create_order"
PUBLISHED_MIN_INTERVAL = 1.0
"""The published limit: one request per second per key, every endpoint."""
PUBLISHED_CREATE_INTERVAL = 5.0
"""The published limit: one ``create_order`` per five seconds per key."""
HELD_POLL = 0.2
"""Seconds a waiting caller sleeps at most before looking again: a slot held for a call in
flight (here or in another process sharing the state) frees as soon as that call ends."""
_MINUTE = 60
_HOUR_MINUTES = 60


class Priority(IntEnum):
    """Who goes first when several calls wait for the same slot (lower value first)."""

    CANCEL = 0
    EDIT = 1
    CREATE = 2
    RECONCILE = 3
    POLL = 4


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` requests in any ``period`` seconds."""

    limit_id: str
    calls: int
    period: float

    def __post_init__(self) -> None:
        if self.calls < 1 or not self.period > 0:
            raise ValueError(f"rate limit {self.limit_id!r} needs calls >= 1 and period > 0")


@dataclass(frozen=True)
class RateLimits:
    """The table: the limits, the ones every endpoint consumes, and extra ones per endpoint."""

    limits: tuple[RateLimit, ...]
    common: tuple[str, ...]
    """Limit ids every endpoint consumes."""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Endpoint name to the further limit ids it consumes."""

    def __post_init__(self) -> None:
        known = {limit.limit_id for limit in self.limits}
        used = set(self.common).union(*self.extra.values())
        if unknown := sorted(used - known):
            raise ValueError(f"rate limit table refers to undefined limits {unknown}")

    def for_endpoint(self, endpoint: str) -> tuple[RateLimit, ...]:
        ids = set(self.common).union(self.extra.get(endpoint, ()))
        return tuple(limit for limit in self.limits if limit.limit_id in ids)


def clore_rate_limits(
    min_interval: float = 1.05, create_interval: float = 5.05
) -> RateLimits:
    """Clore's limits. The defaults keep a margin over the published 1 s and 5 s so requests
    never *arrive* closer than allowed; the simulated market passes the published values."""
    return RateLimits(
        limits=(RateLimit(ALL, 1, min_interval), RateLimit(CREATE_ORDER, 1, create_interval)),
        common=(ALL,),
        extra={"create_order": (CREATE_ORDER,)},
    )


# --- shared state ---------------------------------------------------------------------------------


@dataclass
class LimiterRecord:
    """What the limiter remembers: recent send times per limit, a backoff, sends per minute."""

    sends: dict[str, list[float]] = field(default_factory=dict)
    """Per limit id, the latest send times (no more than the limit's ``calls``)."""
    blocked_until: float = 0.0
    """Nobody sends before this time (set after the exchange said we were too fast)."""
    minutes: dict[int, int] = field(default_factory=dict)
    """Sends per UNIX minute over the last hour, for ``snapshot``."""

    def wait(self, limits: tuple[RateLimit, ...], now: float) -> float:
        """Seconds until every limit allows one more send (0 when it may go now)."""
        ready = self.blocked_until
        for limit in limits:
            recent = self.sends.get(limit.limit_id, [])
            if len(recent) >= limit.calls:
                ready = max(ready, recent[-limit.calls] + limit.period)
        return max(0.0, ready - now)

    def record(self, limits: tuple[RateLimit, ...], now: float, until: float | None = None) -> None:
        """A send at ``now`` whose slot counts from ``until`` (default ``now``; later while the
        call is in flight, see ``settle``)."""
        at = now if until is None else until
        for limit in limits:
            self.sends[limit.limit_id] = [*self.sends.get(limit.limit_id, []), at][-limit.calls :]
        minute = int(now // _MINUTE)
        self.minutes = {m: n for m, n in self.minutes.items() if m > minute - _HOUR_MINUTES}
        self.minutes[minute] = self.minutes.get(minute, 0) + 1

    def settle(self, limits: tuple[RateLimit, ...], held: float, done: float) -> None:
        """The call whose slot was held until ``held`` got its reply at ``done``: its slot counts
        from ``done`` (a slot another process's later send has pushed out is left alone)."""
        for limit in limits:
            recent = self.sends.get(limit.limit_id)
            if recent and held in recent:
                recent[recent.index(held)] = done
                recent.sort()

    def to_json(self) -> str:
        return json.dumps(
            {"sends": self.sends, "blocked_until": self.blocked_until, "minutes": self.minutes}
        )

    @classmethod
    def from_json(cls, text: str) -> LimiterRecord:
        data = json.loads(text)
        return cls(
            sends={str(k): [float(t) for t in v] for k, v in data["sends"].items()},
            blocked_until=float(data["blocked_until"]),
            minutes={int(k): int(v) for k, v in data["minutes"].items()},
        )


class LimiterState(Protocol):
    """Where the record lives. ``update`` runs a function on it atomically (across processes for
    a shared backend) and keeps its changes."""

    def update(self, fn: Callable[[LimiterRecord], T]) -> T: ...


class MemoryLimiterState:
    """The record in memory: shared by the threads of one process (the default)."""

    def __init__(self) -> None:
        self._record = LimiterRecord()
        self._lock = threading.Lock()

    def update(self, fn: Callable[[LimiterRecord], T]) -> T:
        with self._lock:
            return fn(self._record)


class FileLimiterState:
    """The record in a small JSON file guarded by ``fcntl.flock`` on a lock file beside it:
    shared by every process that uses the same key. A new record replaces the file whole
    (written aside, then renamed), so a process killed while writing leaves the previous record,
    never an empty file that would read as "no recent sends". A damaged file is reported and
    started afresh."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def for_key(cls, directory: str | Path, api_key: str) -> FileLimiterState:
        """The state file of one key in ``directory``, named by a hash of the key (not the key)."""
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
        return cls(Path(directory) / f"ratelimit-{digest}.json")

    def update(self, fn: Callable[[LimiterRecord], T]) -> T:
        # the lock is on a file that is never replaced: a lock on the data file would be lost
        # with the inode each rename retires
        lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the descriptor is closed
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            record = self._parse(text)
            result = fn(record)
            new = record.to_json()
            if new != text:
                self._replace(new)
            return result
        finally:
            os.close(lock)

    def _replace(self, text: str) -> None:
        """Write ``text`` beside the file, then rename it over the file (atomic on POSIX)."""
        aside = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(aside, self.path)

    def _parse(self, text: str) -> LimiterRecord:
        if not text:
            return LimiterRecord()
        try:
            return LimiterRecord.from_json(text)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("rate-limit state %s is damaged (%s); starting afresh", self.path, err)
            return LimiterRecord()


# --- the limiter ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimiterSnapshot:
    """What the limiter's budget looks like at ``at`` (for ``bidder status``)."""

    at: float
    calls_last_hour: int
    """Sends by every user of the state in the last 60 minutes (minute resolution)."""
    next_free: dict[str, float]
    """Per limit id, the earliest time a call consuming it may go."""
    blocked_until: float | None
    """Set while backing off after a rate-limit reply."""


class RateLimiter:
    """Blocks each call until the key's limits allow it, highest priority first.

    Waiting callers queue by (priority, arrival). Only the head of the queue may take a slot; it
    sleeps through the clock until its slot is due, then checks again (another process, or a
    higher priority that arrived meanwhile, may have taken it).
    """

    def __init__(
        self,
        clock: Clock,
        limits: RateLimits | None = None,
        *,
        state: LimiterState | None = None,
    ) -> None:
        self._clock = clock
        self.limits = limits if limits is not None else clore_rate_limits()
        self._state: LimiterState = state or MemoryLimiterState()
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int]] = []
        self._arrivals = itertools.count()

    def acquire(self, endpoint: str, priority: Priority, *, hold: float = 0.0) -> float:
        """Wait until ``endpoint`` may be called and record the call; return the time its slot is
        held until: the send time plus ``hold`` (the longest the call may be in flight), to be
        given back to ``done`` with the time its reply came. With ``hold`` 0 the slot counts from
        the send (callers that never call ``done``)."""
        limits = self.limits.for_endpoint(endpoint)
        ticket = (int(priority), next(self._arrivals))
        with self._cond:
            heapq.heappush(self._queue, ticket)
            try:
                while True:
                    if self._queue[0] != ticket:
                        self._cond.wait()
                        continue
                    now = self._clock.now()
                    wait = self._state.update(lambda r: self._take(r, limits, now, now + hold))
                    if wait == 0.0:
                        return now + hold
                    self._cond.release()
                    try:  # a held slot frees early when its call ends: look again soon
                        self._clock.sleep(min(wait, HELD_POLL))
                    finally:
                        self._cond.acquire()
            finally:
                self._queue.remove(ticket)
                heapq.heapify(self._queue)
                self._cond.notify_all()

    @staticmethod
    def _take(record: LimiterRecord, limits: tuple[RateLimit, ...], now: float,
              until: float) -> float:
        wait = record.wait(limits, now)
        if wait == 0.0:
            record.record(limits, now, until)
        return wait

    def done(self, endpoint: str, held: float, at: float) -> None:
        """The call ``acquire`` held a slot for until ``held`` has its reply (or failed) at
        ``at``: the next call may go a period after ``at``."""
        limits = self.limits.for_endpoint(endpoint)
        self._state.update(lambda r: r.settle(limits, held, at))
        with self._cond:
            self._cond.notify_all()

    def backoff(self, seconds: float) -> None:
        """Let nobody using this state send for ``seconds`` (the exchange said we were too fast)."""
        until = self._clock.now() + max(0.0, seconds)

        def block(record: LimiterRecord) -> None:
            record.blocked_until = max(record.blocked_until, until)

        self._state.update(block)

    def snapshot(self) -> LimiterSnapshot:
        now = self._clock.now()

        def read(record: LimiterRecord) -> LimiterSnapshot:
            oldest_minute = int(now // _MINUTE) - _HOUR_MINUTES
            return LimiterSnapshot(
                at=now,
                calls_last_hour=sum(n for m, n in record.minutes.items() if m > oldest_minute),
                next_free={
                    limit.limit_id: now + record.wait((limit,), now) for limit in self.limits.limits
                },
                blocked_until=record.blocked_until if record.blocked_until > now else None,
            )

        return self._state.update(read)

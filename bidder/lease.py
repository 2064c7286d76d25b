"""The one-bot lease: one running bot per database.

Two bots on one database each take the other's orders for strays and orphan them. The database
holds one lease row (``bot_lease``, made by migration 3); a bot takes it when it starts, renews its
heartbeat every cycle and frees it when it stops. A second bot finds it held and refuses to start,
naming the holder. A lease whose heartbeat is older than ``stale_after`` (the holder died without
freeing it), or held by a process of this host that no longer exists, is taken over.

Taking and renewing are compare-and-swap ``UPDATE``s on the row's ``token`` inside a transaction:
plain SQLAlchemy Core, so the same code holds on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bidder.clock import Clock
from storage.models import BotLease

log = logging.getLogger(__name__)

LEASE = "bot"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Holder:
    run_id: int | None
    mode: str | None
    pid: int | None
    host: str | None
    heartbeat_wall: float | None

    def describe(self, now: float) -> str:
        age = "" if self.heartbeat_wall is None else \
            f", last heartbeat {max(0.0, now - self.heartbeat_wall):.0f} s ago"
        return f"run {self.run_id} ({self.mode}, pid {self.pid} on {self.host}{age})"


class LeaseHeld(Exception):
    """Another bot holds the lease of this database."""

    def __init__(self, holder: Holder, now: float, stale_after: float) -> None:
        self.holder = holder
        super().__init__(
            f"another bot is running on this database: {holder.describe(now)}; stop it first "
            f"(its lease is taken over once its heartbeat is {stale_after:.0f} s old)")


class Lease:
    """This process's claim on a database's one-bot lease."""

    def __init__(self, sessions: sessionmaker[Session], wall: Clock, *, stale_after: float,
                 pid: int | None = None, host: str | None = None,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self._sessions = sessions
        self._wall = wall
        self.stale_after = stale_after
        self.pid = os.getpid() if pid is None else pid
        self.host = socket.gethostname() if host is None else host
        self._alive = alive
        self.token: str | None = None

    def check(self, session: Session) -> None:
        """Raise ``LeaseHeld`` when another live bot holds the lease: what ``acquire`` would
        refuse, asked without writing (``bidder run --sim`` asks before it starts afresh)."""
        now = self._wall.now()
        row = session.execute(select(BotLease).where(BotLease.name == LEASE)).scalar_one_or_none()
        if row is None or row.token is None:
            return
        holder = Holder(row.run_id, row.mode, row.pid, row.host, row.heartbeat_wall)
        if not self._may_take(holder, now):
            raise LeaseHeld(holder, now, self.stale_after)

    def acquire(self, session: Session, run_id: int, mode: str) -> None:
        """Take the lease for ``run_id`` in ``session``'s transaction (so a refused start records
        no run). Raises ``LeaseHeld`` naming the holder when another live bot has it."""
        now = self._wall.now()
        row = session.execute(select(BotLease).where(BotLease.name == LEASE)).scalar_one()
        holder = Holder(row.run_id, row.mode, row.pid, row.host, row.heartbeat_wall)
        seen = row.token
        if seen is not None and not self._may_take(holder, now):
            raise LeaseHeld(holder, now, self.stale_after)
        token = uuid.uuid4().hex
        taken = session.execute(
            update(BotLease).where(BotLease.name == LEASE,
                                   BotLease.token.is_(None) if seen is None
                                   else BotLease.token == seen)
            .values(token=token, run_id=run_id, mode=mode, pid=self.pid, host=self.host,
                    acquired_wall=now, heartbeat_wall=now)
            .execution_options(synchronize_session=False))
        if taken.rowcount != 1:  # another bot took it between our read and our write
            session.expire_all()
            row = session.execute(select(BotLease).where(BotLease.name == LEASE)).scalar_one()
            raise LeaseHeld(Holder(row.run_id, row.mode, row.pid, row.host, row.heartbeat_wall),
                            now, self.stale_after)
        if seen is not None:
            log.warning("took over the lease of %s", holder.describe(now))
        self.token = token

    def _may_take(self, holder: Holder, now: float) -> bool:
        if holder.heartbeat_wall is None or now - holder.heartbeat_wall >= self.stale_after:
            return True
        if holder.host == self.host and holder.pid is not None:
            # this very process (a run that crashed before freeing it) or a process that is gone
            return holder.pid == self.pid or not self._alive(holder.pid)
        return False

    def heartbeat(self) -> bool:
        """Renew the lease; False when it is no longer ours (another bot took it over)."""
        if self.token is None:
            return False
        with self._sessions.begin() as session:
            renewed = session.execute(
                update(BotLease).where(BotLease.name == LEASE, BotLease.token == self.token)
                .values(heartbeat_wall=self._wall.now())
                .execution_options(synchronize_session=False))
        if renewed.rowcount != 1:
            self.token = None
            return False
        return True

    def release(self) -> None:
        """Free the lease if it is still ours."""
        if self.token is None:
            return
        with self._sessions.begin() as session:
            session.execute(
                update(BotLease).where(BotLease.name == LEASE, BotLease.token == self.token)
                .values(token=None, heartbeat_wall=None)
                .execution_options(synchronize_session=False))
        self.token = None

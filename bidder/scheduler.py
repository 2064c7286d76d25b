"""Run periodic jobs (polls, decide cycles) until told to stop: APScheduler 3.x wiring.

Each job runs first at once, then every ``interval`` seconds of the bot's clock; an accelerated
simulation runs its clock ``speed`` times faster than real time, so the real interval is
``interval / speed``. A job never overlaps itself (``max_instances=1``); runs missed while it was
busy or the machine slept collapse into one (``coalesce``), and a run later than
``misfire_grace_time`` is skipped rather than run out of step. A job that raises is logged in one
line and runs again at its next time: one bad run never stops the bot.

Stopping is cooperative: SIGINT, SIGTERM, the end of ``duration`` or the caller set ``stop``; jobs
see it between their API calls (``MarketPoller`` does), the scheduler waits for the running ones to
return, and ``run_jobs`` returns 0.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
    JobExecutionEvent,
    SchedulerEvent,
)
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

_APSCHEDULER_REPEATS = ('Job "%s" raised an exception',
                        'Execution of job "%s" skipped: maximum number of running instances')
"""APScheduler's own log messages that ``JobListener`` reports instead (in one line, and a busy job
only once): the first comes with a traceback, the second on every overlapping run."""


@dataclass(frozen=True)
class JobSpec:
    id: str
    """Unique; names the job in logs."""
    func: Callable[[], object]
    interval: float
    """Seconds of the bot's clock (simulated seconds in an accelerated simulation)."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a job needs a non-empty id")
        if not self.interval > 0:
            raise ValueError(f"job {self.id!r}: interval must be positive, got {self.interval}")


class JobListener:
    """Reports APScheduler's job events: errors in one line (and to ``on_job_error``), missed runs,
    and a job still busy when due again (once per job, as it may go on for as long as the rate
    budget is tight)."""

    def __init__(self, on_job_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._on_job_error = on_job_error
        self._busy_reported: set[str] = set()

    def __call__(self, event: SchedulerEvent) -> None:
        if isinstance(event, JobExecutionEvent) and event.code == EVENT_JOB_ERROR:
            exc = event.exception
            log.error("job %s failed: %s: %s", event.job_id, type(exc).__name__,
                      " ".join(str(exc).split()))
            log.debug("job %s traceback:\n%s", event.job_id, event.traceback)
            if self._on_job_error is not None:
                self._on_job_error(event.job_id, exc)
        elif isinstance(event, JobExecutionEvent) and event.code == EVENT_JOB_MISSED:
            log.warning("job %s: the run due at %s was missed by more than the grace time; "
                        "skipped", event.job_id, event.scheduled_run_time)
        elif isinstance(event, JobEvent) and event.code == EVENT_JOB_MAX_INSTANCES:
            level = logging.DEBUG if event.job_id in self._busy_reported else logging.WARNING
            self._busy_reported.add(event.job_id)
            log.log(level, "job %s is still running when due again; it runs less often than "
                    "asked (further skips are logged at DEBUG)", event.job_id)


class _DropRepeats(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_APSCHEDULER_REPEATS))


def build_scheduler(jobs: Sequence[JobSpec], *, speed: float = 1.0,
                    misfire_grace_time: float = 30.0, start: datetime | None = None,
                    on_job_error: Callable[[str, BaseException], None] | None = None,
                    ) -> BlockingScheduler:
    """A scheduler holding ``jobs``, not started: each first due at ``start`` (default: now), then
    every ``interval / speed`` real seconds. ``misfire_grace_time`` is in real seconds, rounded up
    to whole ones (APScheduler takes an integer)."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if not misfire_grace_time > 0:
        raise ValueError(f"misfire_grace_time must be positive, got {misfire_grace_time}")
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"job ids must be unique, got {ids}")
    first = start if start is not None else datetime.now(UTC)
    grace = math.ceil(misfire_grace_time)
    scheduler = BlockingScheduler(timezone=UTC)
    for job in jobs:
        trigger = IntervalTrigger(seconds=job.interval / speed, start_date=first, timezone=UTC)
        scheduler.add_job(job.func, trigger, id=job.id, name=job.id, next_run_time=first,
                          coalesce=True, max_instances=1, misfire_grace_time=grace)
    scheduler.add_listener(JobListener(on_job_error),
                           EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    return scheduler


@contextmanager
def _stop_on_signals(stop: threading.Event, install: bool,
                     on_signal: Callable[[str], None] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (main thread only; ``on_signal`` hears the signal's name);
    the previous handlers come back after."""
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.info("%s received: finishing the calls in flight, then stopping", name)
        if on_signal is not None:
            on_signal(name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _quiet_apscheduler() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("apscheduler.scheduler",
                                                    "apscheduler.executors.default")]
    drop = _DropRepeats()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def run_jobs(jobs: Sequence[JobSpec], *, speed: float = 1.0, duration: float | None = None,
             misfire_grace_time: float = 30.0, stop: threading.Event | None = None,
             install_signal_handlers: bool = True,
             on_job_error: Callable[[str, BaseException], None] | None = None,
             on_signal: Callable[[str], None] | None = None) -> int:
    """Run ``jobs`` until ``stop`` is set (by the caller, SIGINT or SIGTERM: ``on_signal`` hears
    its name) or ``duration`` real seconds have passed; wait for running jobs to return; return 0
    (the exit status)."""
    if duration is not None and not duration >= 0:
        raise ValueError(f"duration must be 0 or more seconds, got {duration}")
    stop = stop if stop is not None else threading.Event()
    scheduler = build_scheduler(jobs, speed=speed, misfire_grace_time=misfire_grace_time,
                                on_job_error=on_job_error)

    def shut_down_when_told() -> None:
        if not stop.wait(duration):
            log.info("ran for %g s as asked; stopping", duration)
            stop.set()
        scheduler.remove_all_jobs()  # nothing new starts, even while waiting for running jobs
        scheduler.shutdown(wait=True)  # waits for the running jobs

    def on_started(_event: SchedulerEvent) -> None:
        threading.Thread(target=shut_down_when_told, name="bidder-scheduler-stop",
                         daemon=True).start()

    scheduler.add_listener(on_started, EVENT_SCHEDULER_STARTED)
    with _stop_on_signals(stop, install_signal_handlers, on_signal), _quiet_apscheduler():
        scheduler.start()  # blocks until shut_down_when_told has shut it down
    return 0


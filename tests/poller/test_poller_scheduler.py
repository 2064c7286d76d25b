"""The scheduler wiring: job options, trigger maths (asked of the triggers, no scheduler running),
the error listener, and short real runs of ``run_jobs`` (duration, stop, SIGTERM, failing jobs)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)

from bidder.scheduler import JobListener, JobSpec, build_scheduler, run_jobs

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def noop():
    return None


def fire_times(scheduler, job_id, count, now):
    """The next ``count`` run times, asked of the job's trigger as the scheduler asks it."""
    trigger = scheduler.get_job(job_id).trigger
    times, previous = [], None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, previous or now)
        times.append(previous)
    return times


def test_jobs_have_explicit_ids_and_safe_options():
    scheduler = build_scheduler([JobSpec("gigaspot", noop, 60), JobSpec("spot", noop, 30)],
                                misfire_grace_time=12.5, start=T0)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"gigaspot", "spot"}
    for job in jobs.values():
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 13)
        assert job.next_run_time == T0  # first run at once
    assert str(scheduler.timezone) == "UTC"


@pytest.mark.parametrize(("interval", "speed", "real_seconds"),
                         [(30, 1, 30), (60, 60, 1), (3600, 60, 60), (30, 0.5, 60)])
def test_intervals_are_in_clock_seconds_divided_by_speed(interval, speed, real_seconds):
    scheduler = build_scheduler([JobSpec("job", noop, interval)], speed=speed, start=T0)
    step = timedelta(seconds=real_seconds)
    assert fire_times(scheduler, "job", 4, T0) == [T0, T0 + step, T0 + 2 * step, T0 + 3 * step]


def test_a_late_wake_up_resumes_on_the_grid_instead_of_catching_up():
    scheduler = build_scheduler([JobSpec("job", noop, 30)], start=T0)
    trigger = scheduler.get_job("job").trigger
    late = T0 + timedelta(seconds=75)
    assert trigger.get_next_fire_time(None, late) == T0 + timedelta(seconds=90)


@pytest.mark.parametrize(("jobs", "kwargs", "words"), [
    ([JobSpec("a", noop, 1), JobSpec("a", noop, 2)], {}, "unique"),
    ([JobSpec("a", noop, 1)], {"speed": 0}, "speed"),
    ([JobSpec("a", noop, 1)], {"misfire_grace_time": 0}, "misfire_grace_time"),
])
def test_bad_settings_are_refused(jobs, kwargs, words):
    with pytest.raises(ValueError, match=words):
        build_scheduler(jobs, **kwargs)


@pytest.mark.parametrize(("fields", "words"), [({"id": ""}, "id"), ({"interval": 0}, "interval")])
def test_bad_job_specs_are_refused(fields, words):
    with pytest.raises(ValueError, match=words):
        JobSpec(**{"id": "a", "func": noop, "interval": 1, **fields})


def test_the_listener_logs_a_job_error_in_one_line_and_tells_the_caller(caplog):
    told = []
    listener = JobListener(lambda job_id, exc: told.append((job_id, exc)))
    error = RuntimeError("database is locked\nwhile recording")
    with caplog.at_level(logging.DEBUG, logger="bidder.scheduler"):
        listener(JobExecutionEvent(EVENT_JOB_ERROR, "spot", "default", T0, exception=error,
                                   traceback="Traceback ..."))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["job spot failed: RuntimeError: database is locked while recording"]
    assert told == [("spot", error)]


def test_the_listener_reports_a_busy_job_once_and_missed_runs(caplog):
    listener = JobListener()
    with caplog.at_level(logging.DEBUG, logger="bidder.scheduler"):
        for _ in range(3):
            listener(JobEvent(EVENT_JOB_MAX_INSTANCES, "spot", "default"))
        listener(JobExecutionEvent(EVENT_JOB_MISSED, "gigaspot", "default", T0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "spot is still running" in warnings[0] and "gigaspot" in warnings[1]
    assert sum("still running" in r.getMessage() for r in caplog.records) == 3


# --- real runs (short, real time; never under freezegun) -----------------------------------------


def test_run_jobs_runs_every_job_at_once_and_stops_after_duration():
    runs = {"a": 0, "b": 0}

    def counter(name):
        def job():
            runs[name] += 1
        return job

    status = run_jobs([JobSpec("a", counter("a"), 0.05), JobSpec("b", counter("b"), 3600)],
                      duration=0.3)
    assert status == 0
    assert runs["b"] == 1 and runs["a"] >= 2


def test_stop_waits_for_the_running_job_to_finish_its_call():
    stop = threading.Event()
    finished = []

    def job():
        stop.set()  # as if SIGTERM came during this job's API call
        finished.append(stop.wait(5))  # the call in flight completes

    assert run_jobs([JobSpec("job", job, 3600)], stop=stop) == 0
    assert finished == [True]


def test_sigterm_stops_cleanly_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    runs = []

    def job():
        runs.append(1)
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_jobs([JobSpec("job", job, 3600)], duration=30) == 0
    assert runs == [1]
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_signal_is_named_to_on_signal():
    heard = []
    assert run_jobs([JobSpec("job", lambda: os.kill(os.getpid(), signal.SIGTERM), 3600)],
                    duration=30, on_signal=heard.append) == 0
    assert heard == ["SIGTERM"]


def test_a_failing_job_is_reported_and_runs_again_while_the_others_go_on(caplog):
    errors = []
    calls = {"bad": 0, "good": 0}
    stop = threading.Event()

    def bad():
        calls["bad"] += 1
        raise ValueError(f"boom {calls['bad']}")

    def good():
        calls["good"] += 1

    def on_error(job_id, exc):
        errors.append((job_id, str(exc)))
        if len(errors) == 2:
            stop.set()

    with caplog.at_level(logging.INFO):
        assert run_jobs([JobSpec("bad", bad, 0.05), JobSpec("good", good, 0.05)], stop=stop,
                        on_job_error=on_error, duration=30) == 0
    assert errors[:2] == [("bad", "boom 1"), ("bad", "boom 2")]
    assert calls["good"] >= 1
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert {r.name for r in failures} == {"bidder.scheduler"}  # APScheduler's own are dropped
    assert [r.getMessage() for r in failures[:2]] == ["job bad failed: ValueError: boom 1",
                                                      "job bad failed: ValueError: boom 2"]
    assert not [r for r in caplog.records if r.exc_info]  # one line each, no traceback

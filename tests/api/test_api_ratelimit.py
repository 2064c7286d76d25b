"""The limiter: spacing per limit, backoff, priorities across threads, state shared by processes."""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from freezegun import freeze_time

from api_fakes import KEY, T0, SteppedClock, fixture
from bidder.api import (
    FileLimiterState,
    MemoryLimiterState,
    Priority,
    RateLimit,
    RateLimiter,
    RateLimits,
    clore_rate_limits,
)
from bidder.api.ratelimit import PUBLISHED_CREATE_INTERVAL, PUBLISHED_MIN_INTERVAL
from bidder.clock import ManualClock, SystemClock


def rel(times: list[float]) -> list[float]:
    return [t - T0 for t in times]


def test_the_table_says_what_each_endpoint_consumes() -> None:
    limits = clore_rate_limits()
    assert limits.for_endpoint("create_order") == (
        RateLimit("all", 1, 1.05),
        RateLimit("create_order", 1, 5.05),
    )
    assert limits.for_endpoint("wallets") == (RateLimit("all", 1, 1.05),)
    assert limits.for_endpoint("cancel_orders") == (RateLimit("all", 1, 1.05),)
    published = clore_rate_limits(PUBLISHED_MIN_INTERVAL, PUBLISHED_CREATE_INTERVAL)
    assert published.for_endpoint("create_order") == (
        RateLimit("all", 1, 1.0),
        RateLimit("create_order", 1, 5.0),
    )


def test_a_table_naming_an_undefined_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"undefined limits \['burst'\]"):
        RateLimits(limits=(RateLimit("all", 1, 1.0),), common=("all",), extra={"x": ("burst",)})
    with pytest.raises(ValueError, match="needs calls >= 1 and period > 0"):
        RateLimit("all", 0, 1.0)


def test_calls_are_spaced_by_the_common_limit() -> None:
    limiter = RateLimiter(ManualClock(T0))
    times = [limiter.acquire(name, Priority.POLL) for name in ("wallets", "marketplace", "x")]
    assert rel(times) == pytest.approx([0.0, 1.05, 2.10])


def test_create_order_also_waits_for_its_own_limit() -> None:
    limiter = RateLimiter(ManualClock(T0))
    times = [
        limiter.acquire("create_order", Priority.CREATE),
        limiter.acquire("set_spot_price", Priority.EDIT),
        limiter.acquire("create_order", Priority.CREATE),
        limiter.acquire("wallets", Priority.POLL),
    ]
    assert rel(times) == pytest.approx([0.0, 1.05, 5.05, 6.10])


def test_a_limit_of_several_calls_per_period() -> None:
    limits = RateLimits(limits=(RateLimit("burst", 3, 10.0),), common=("burst",))
    limiter = RateLimiter(ManualClock(T0), limits)
    times = [limiter.acquire("x", Priority.POLL) for _ in range(7)]
    assert rel(times) == [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0]


def test_backoff_holds_every_caller() -> None:
    clock = ManualClock(T0)
    limiter = RateLimiter(clock)
    limiter.acquire("wallets", Priority.POLL)
    limiter.backoff(30.0)
    assert limiter.acquire("cancel_order", Priority.CANCEL) - T0 == 30.0
    limiter.backoff(0.5)  # shorter than the spacing: changes nothing
    assert limiter.acquire("wallets", Priority.POLL) - T0 == pytest.approx(31.05)


def test_snapshot_shows_the_budget() -> None:
    clock = ManualClock(T0)
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.acquire("wallets", Priority.POLL)
    limiter.acquire("create_order", Priority.CREATE)
    limiter.backoff(10.0)
    snap = limiter.snapshot()
    assert snap.at == clock.now() and rel([snap.at]) == pytest.approx([3.15])
    assert snap.calls_last_hour == 4
    assert snap.blocked_until is not None and snap.blocked_until - snap.at == 10.0
    next_free = {k: v - T0 for k, v in snap.next_free.items()}
    assert next_free == pytest.approx({"all": 13.15, "create_order": 13.15})
    clock.advance(3600.0)
    later = limiter.snapshot()
    assert (later.calls_last_hour, later.blocked_until) == (0, None)
    assert later.next_free == {"all": later.at, "create_order": later.at}


def test_works_under_freezegun_with_the_system_clock() -> None:
    with freeze_time("2025-01-01 00:00:00", auto_tick_seconds=0) as frozen:
        clock = SystemClock()
        limiter = RateLimiter(clock)
        start = limiter.acquire("wallets", Priority.POLL)
        frozen.tick(1.05)
        assert limiter.acquire("wallets", Priority.POLL) == pytest.approx(start + 1.05)


def test_higher_priorities_are_served_first_across_threads() -> None:
    clock = SteppedClock(T0)
    limiter = RateLimiter(clock)
    assert limiter.acquire("wallets", Priority.POLL) == T0  # the slot is taken for 1.05 s
    served: queue.Queue[tuple[str, float]] = queue.Queue()

    def caller(name: str, priority: Priority) -> threading.Thread:
        def run() -> None:
            served.put((name, limiter.acquire(name, priority)))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = []
    for n, (name, priority) in enumerate(
        [
            ("marketplace", Priority.POLL),
            ("create_order", Priority.CREATE),
            ("cancel_order", Priority.CANCEL),
        ],
        start=1,
    ):
        threads.append(caller(name, priority))
        clock.wait_for_sleepers(n)  # each newcomer outranks the queue's head, so it waits too
    order = []
    for _ in threads:
        clock.advance(1.05)
        name, at = served.get(timeout=10)
        order.append((name, round(at - T0, 2)))
        if len(order) < len(threads):
            clock.wait_for_sleepers(1)
    for thread in threads:
        thread.join(timeout=10)
    assert order == [("cancel_order", 1.05), ("create_order", 2.10), ("marketplace", 3.15)]


def test_two_limiters_share_a_state_file(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "state" / "ratelimit.json"
    first = RateLimiter(clock, state=FileLimiterState(path))
    second = RateLimiter(clock, state=FileLimiterState(path))
    assert first.acquire("create_order", Priority.CREATE) == T0
    assert second.acquire("wallets", Priority.POLL) - T0 == pytest.approx(1.05)
    assert first.acquire("create_order", Priority.CREATE) - T0 == pytest.approx(5.05)
    second.backoff(20.0)
    assert first.acquire("wallets", Priority.POLL) - T0 == pytest.approx(25.05)
    assert second.snapshot().calls_last_hour == 4
    assert (path.stat().st_mode & 0o777) == 0o600


def test_the_state_file_is_shared_with_another_process(tmp_path: Path) -> None:
    path = tmp_path / "ratelimit.json"
    script = (
        "import sys; from bidder.api import RateLimiter, FileLimiterState, Priority;"
        "from bidder.clock import ManualClock;"
        f"limiter = RateLimiter(ManualClock({T0}), state=FileLimiterState(sys.argv[1]));"
        "print(limiter.acquire('cancel_orders', Priority.CANCEL))"
    )
    command = [sys.executable, "-c", script, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert float(done.stdout) == T0
    limiter = RateLimiter(ManualClock(T0), state=FileLimiterState(path))
    assert limiter.acquire("wallets", Priority.POLL) - T0 == pytest.approx(1.05)


def test_a_process_dying_while_it_writes_the_state_leaves_the_previous_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot SIGKILLed mid-write must not leave an empty state file: read as "no recent sends",
    it would let the next process send within the second. The new record is written aside and
    renamed over the old one; dying before the rename keeps the old one."""
    import bidder.api.ratelimit as ratelimit

    clock = ManualClock(T0)
    path = tmp_path / "ratelimit.json"
    RateLimiter(clock, state=FileLimiterState(path)).acquire("create_order", Priority.CREATE)
    before = path.read_text()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed between writing and renaming")

    monkeypatch.setattr(ratelimit.os, "replace", killed)
    clock.advance(2.0)
    with pytest.raises(KeyboardInterrupt):
        RateLimiter(clock, state=FileLimiterState(path)).acquire("wallets", Priority.POLL)
    monkeypatch.undo()
    assert path.read_text() == before
    limiter = RateLimiter(clock, state=FileLimiterState(path))
    assert limiter.acquire("create_order", Priority.CREATE) - T0 == pytest.approx(5.05)


def test_the_state_file_is_named_by_a_hash_and_holds_no_key(tmp_path: Path) -> None:
    state = FileLimiterState.for_key(tmp_path, KEY)
    assert state.path.parent == tmp_path and KEY not in state.path.name
    assert state.path == FileLimiterState.for_key(tmp_path, KEY).path
    assert state.path != FileLimiterState.for_key(tmp_path, KEY + "x").path
    RateLimiter(ManualClock(T0), state=state).acquire("create_order", Priority.CREATE)
    text = state.path.read_text()
    assert KEY not in text
    assert json.loads(text)["sends"] == {"all": [T0], "create_order": [T0]}


def test_a_damaged_state_file_is_reported_and_started_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ratelimit.json"
    path.write_text("{not json")
    limiter = RateLimiter(ManualClock(T0), state=FileLimiterState(path))
    with caplog.at_level(logging.WARNING):
        assert limiter.acquire("wallets", Priority.POLL) == T0
    assert "is damaged" in caplog.text
    assert json.loads(path.read_text())["sends"] == {"all": [T0]}


def test_memory_state_is_the_default_and_per_instance() -> None:
    clock = ManualClock(T0)
    shared = MemoryLimiterState()
    a, b = RateLimiter(clock, state=shared), RateLimiter(clock, state=shared)
    assert a.acquire("wallets", Priority.POLL) == T0
    assert b.acquire("wallets", Priority.POLL) - T0 == pytest.approx(1.05)
    assert RateLimiter(clock).acquire("wallets", Priority.POLL) == clock.now()


def test_a_slot_counts_from_the_reply_of_a_slow_call() -> None:
    """The exchange counts a request when it arrives, and arrivals lag sends by varying delays:
    the next send waits a period after the reply, when the exchange has surely seen the call."""
    clock = ManualClock(T0)
    limiter = RateLimiter(clock)
    held = limiter.acquire("wallets", Priority.POLL, hold=30.0)
    assert held - T0 == 30.0  # in flight: nobody may send before it ends or its hold runs out
    clock.advance(0.7)  # the reply takes 0.7 s
    limiter.done("wallets", held, clock.now())
    assert limiter.acquire("marketplace", Priority.POLL) - T0 == pytest.approx(0.7 + 1.05)


def test_a_call_in_flight_holds_its_slot_for_every_user_of_the_state() -> None:
    """A second process (sharing the state) waits while the call is in flight; if its caller died
    and never said it ended, the slot frees when the hold runs out."""
    clock = ManualClock(T0)
    state = MemoryLimiterState()
    mine, other = RateLimiter(clock, state=state), RateLimiter(clock, state=state)
    mine.acquire("create_order", Priority.CREATE, hold=30.0)  # never done: its caller died
    assert other.acquire("cancel_order", Priority.CANCEL) - T0 == pytest.approx(31.05)


def test_the_client_spaces_calls_from_their_replies(
    make_client, server, clock: ManualClock
) -> None:
    """Seen from the exchange: each request arrives a full period after the previous reply,
    however long the replies take."""
    arrivals: list[float] = []

    def slow(request):
        arrivals.append(clock.now())
        clock.advance(0.4)  # the exchange takes 0.4 s to answer
        return fixture("wallets.json")

    server.on("wallets", slow, slow, slow)
    client = make_client()
    for _ in range(3):
        client.wallets()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps == pytest.approx([0.4 + 1.05] * 2)

"""Injectable time.

Nothing in the bot reads the wall clock directly: every component takes a ``Clock``. That makes
freezegun tests exact, lets the simulated market run faster than real time, and lets a backtest
replay months in seconds. Times are UNIX seconds as ``float`` throughout.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time and a way to wait for it."""

    def now(self) -> float:
        """Current UNIX time in seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock. Looks ``time.time`` up at call time, so freezegun can patch it."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it instantly.

    Used by tests and by in-process simulations: a component that sleeps to respect a rate limit
    simply moves this clock forward, and the simulated market (sharing the clock) sees the same
    time. Thread-safe, but with several sleeping threads the order of wake-ups is not modelled;
    drive multi-threaded code with a real or scaled clock instead.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"ManualClock cannot go backwards (advance by {seconds})")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        """Jump to UNIX time ``t``; refuses to go backwards."""
        with self._lock:
            if t < self._t:
                raise ValueError(f"ManualClock cannot go backwards ({t} < {self._t})")
            self._t = float(t)


class ScaledClock:
    """Real time sped up ``speed`` times, starting at ``start`` (UNIX seconds).

    ``sleep(s)`` waits ``s / speed`` real seconds, so every component that sleeps through the
    clock keeps its rules in simulated time while a demo runs ``speed`` times faster.
    """

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = float(speed)
        self._start = time.time() if start is None else float(start)
        self._m0 = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._m0) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)

"""Fakes for the API client tests: a scripted Clore server behind ``httpx.MockTransport`` and a
clock whose ``sleep`` blocks until the test moves time (for deterministic multi-thread tests)."""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bidder.clock import ManualClock

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "TestKey-5W7YDyDJeB4XANVvKndbrrPk"
T0 = 1_700_000_000.0
CDN = "https://gigaspot-snapshots.clore.ai"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Seen:
    """One request as the fake server received it."""

    at: float
    method: str
    path: str
    params: dict[str, str]
    headers: httpx.Headers
    body: Any


Answer = Any
"""A JSON value (sent with status 200), an ``httpx.Response``, or a callable taking the request
that returns a response or raises (e.g. ``raises(httpx.ReadTimeout)``)."""


def raises(
    exc_type: type[httpx.RequestError], message: str = "boom"
) -> Callable[[httpx.Request], Any]:
    def answer(request: httpx.Request) -> Any:
        raise exc_type(message, request=request)

    return answer


def status(
    code: int, body: Any = None, headers: dict[str, str] | None = None, text: str = ""
) -> Callable[[httpx.Request], httpx.Response]:
    """An answer with this status (a fresh response for every request it answers)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if body is not None:
            return httpx.Response(code, json=body, headers=headers)
        return httpx.Response(code, text=text, headers=headers)

    return answer


class FakeServer:
    """Answers each request with the next scripted answer for its last path segment; an unscripted
    request fails the test."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.seen: list[Seen] = []
        self._script: dict[str, deque[Answer]] = defaultdict(deque)

    def on(self, name: str, *answers: Answer) -> FakeServer:
        self._script[name].extend(answers)
        return self

    def times(self) -> list[float]:
        return [s.at - T0 for s in self.seen]

    def handler(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        self.seen.append(
            Seen(
                at=self.clock.now(),
                method=request.method,
                path=request.url.path,
                params=dict(request.url.params),
                headers=request.headers,
                body=json.loads(request.content) if request.content else None,
            )
        )
        if not self._script[name]:
            raise AssertionError(f"unscripted request to {name}")
        answer = self._script[name].popleft()
        if callable(answer):
            answer = answer(request)
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)


class SteppedClock:
    """Time moves only when the test calls ``advance``; ``sleep`` blocks until then.

    ``wait_for_sleepers(n)`` returns once ``n`` threads sleep towards a time still in the future,
    so a test knows every thread has reached its wait before it moves time on.
    """

    def __init__(self, start: float = T0) -> None:
        self._t = start
        self._cond = threading.Condition()
        self._wake_times: list[float] = []

    def now(self) -> float:
        with self._cond:
            return self._t

    def sleep(self, seconds: float) -> None:
        with self._cond:
            wake = self._t + seconds
            self._wake_times.append(wake)
            self._cond.notify_all()
            try:
                if not self._cond.wait_for(lambda: self._t >= wake, timeout=10):
                    raise TimeoutError("SteppedClock: the test never advanced time")
            finally:
                self._wake_times.remove(wake)

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._t += seconds
            self._cond.notify_all()

    def wait_for_sleepers(self, n: int) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(w > self._t for w in self._wake_times) >= n, timeout=10
            )
        assert ok, f"expected {n} sleeping threads"

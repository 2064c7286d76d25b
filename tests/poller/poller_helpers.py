"""Helpers of the poller tests: a hookable in-process transport to the simulated market, and a
loop that runs the recorder's jobs on a manual clock the way the scheduler would."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bidder.clock import ManualClock
from bidder.sim import SimMarket

START = 1_700_000_000.0
KEY = "PollerKey-Zq8vT3mN1xW6yB4kRr2"
BASE_URL = "http://sim.test/v1"

Answer = Callable[[], httpx.Response]
Hook = Callable[[httpx.Request, Answer], httpx.Response]


class HookedTransport(httpx.BaseTransport):
    """Serves ``market`` in-process; while ``hook`` is set, it decides what each request gets
    (``answer()`` lets the market answer)."""

    def __init__(self, market: SimMarket) -> None:
        self.market = market
        self.hook: Hook | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()

        def answer() -> httpx.Response:
            return self.market.handle(request)

        return answer() if self.hook is None else self.hook(request, answer)


def is_cdn(request: httpx.Request) -> bool:
    return request.url.path.startswith("/cdn/")


def endpoint(request: httpx.Request) -> str:
    return request.url.path.rsplit("/", 1)[-1]


def cdn_hook(edit: Callable[[bytes], bytes] | None = None, status: int = 200) -> Hook:
    """A hook that changes the CDN's snapshot bytes with ``edit``, or answers ``status``."""

    def hook(request: httpx.Request, answer: Answer) -> httpx.Response:
        if not is_cdn(request):
            return answer()
        if status != 200:
            return httpx.Response(status, text="Not Found")
        response = answer()
        return httpx.Response(200, content=edit(response.content) if edit else response.content)

    return hook


def edit_machine(machine_id: int, change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """A snapshot edit applying ``change`` to one machine's entry."""

    def edit(raw: bytes) -> bytes:
        snapshot = json.loads(raw)
        change(snapshot[str(machine_id)])
        return json.dumps(snapshot).encode()

    return edit


def api_reply_hook(replies: dict[tuple[str, str | None], dict[str, Any]]) -> Hook:
    """Answers ``(endpoint, market param)`` with a fixed JSON body instead of the market."""

    def hook(request: httpx.Request, answer: Answer) -> httpx.Response:
        body = replies.get((endpoint(request), request.url.params.get("market")))
        return answer() if body is None else httpx.Response(200, json=body)

    return hook


@dataclass
class Job:
    name: str
    func: Callable[[], object]
    interval: float
    due: float


def run_like_scheduler(clock: ManualClock, jobs: Sequence[tuple[str, Callable[[], object], float]],
                       until: float) -> list[tuple[str, float, object]]:
    """Run the jobs in time order on the manual clock until ``until``: each first at once, then
    every interval (a late run is not repeated: coalesced). Returns (name, start, result) per run."""
    queue = [Job(name, func, interval, clock.now()) for name, func, interval in jobs]
    runs = []
    while True:
        job = min(queue, key=lambda j: j.due)
        if job.due > until:
            return runs
        if clock.now() < job.due:
            clock.set(job.due)
        started = clock.now()
        runs.append((job.name, started, job.func()))
        while job.due <= clock.now():
            job.due += job.interval

"""Helpers of the bot's tests: configs on the simulated market, a manual-clock job driver, fault
injection in the transport, and the invariants every test checks against the market's own records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bidder.bot import Bot
from bidder.clock import ManualClock
from bidder.config import CLORE, Config, parse_config
from bidder.book import APPEARED
from bidder.sim import Order, SimMarket
from bidder.sim.faults import NoReply
from bidder.sim.invariants import InvariantReport, invariant_report
from storage.db import Database
from storage.models import BotOrder, BotOrderEvent

START = 1_700_000_000.0
KEY = "test-key-7c41e0b9d2a35f86"
"""Distinctive, so a scan for it cannot hit anything else."""
BASE_URL = "http://sim.test/v1"


def spot_target(**overrides: Any) -> dict[str, Any]:
    return {"name": "s", "market": "spot", "unit": "servers", "count": 1,
            "max_price_per_gpu_day": 400.0, **overrides}


def giga_target(**overrides: Any) -> dict[str, Any]:
    return {"name": "g", "market": "gigaspot", "count": 2, "max_price_per_gpu_day": 100.0,
            "oc": {"pl": 150}, "min_reliability": 0.0, **overrides}


def make_config(*targets: dict[str, Any], budget: float | None = None,
                **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"api": {"key": KEY, "base_url": BASE_URL}, "targets": list(targets),
                            "poller": {"spot_polls_per_round": 4}, **sections}
    if budget is not None:
        data["budget"] = {"max_per_day": budget, "currency": CLORE}
    return parse_config(data)


class Crash(BaseException):
    """A simulated kill: nothing after it runs (not an ``Exception``, so nothing catches it)."""


@dataclass
class Faults:
    """The market's handler with faults injected by endpoint and call number.

    ``kind``: ``crash_before`` (the request never arrives), ``crash_after`` (the market acted,
    the reply is never read), ``timeout_after`` (the market acted, the reply is lost: outcome
    unknown), ``timeout_before`` (the request was lost on the way: outcome unknown, nothing
    happened), ``not_sent`` (a connect error), ``code_5`` (refused as too fast, nothing done).
    """

    market: SimMarket
    calls: Counter[str] = field(default_factory=Counter)
    rules: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(self, endpoint: str, kind: str, nth: int = 1) -> None:
        self.rules[(endpoint, self.calls[endpoint] + nth)] = kind

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        if request.url.path.startswith("/v1/"):
            self.calls[name] += 1
        kind = self.rules.pop((name, self.calls[name]), None)
        if kind == "crash_before":
            raise Crash(f"killed before {name} was sent")
        if kind == "not_sent":
            raise httpx.ConnectError("connection refused", request=request)
        if kind == "timeout_before":
            raise httpx.ReadTimeout("timed out", request=request)
        if kind == "code_5":  # refused as too fast, as when something else spends the key's budget
            return httpx.Response(200, json={"code": 5})
        try:
            response = self.market.handle(request)
        except NoReply as lost:  # the market's own injected faults (``SimOptions.faults``)
            raise httpx.ReadTimeout(f"no reply ({lost.kind})", request=request) from None
        if kind == "crash_after":
            raise Crash(f"killed after {name} was processed")
        if kind == "timeout_after":
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def new_bot(config: Config, database: Database, clock: ManualClock, transport: httpx.BaseTransport,
            state_dir: Path | None, *, mode: str = "live", **kwargs: Any) -> Bot:
    """A bot on the simulated market; ``state_dir`` keeps the rate limiter's record across
    restarts, as a real restart does (None: in memory)."""
    return Bot(config, database, mode=mode, clock=clock,  # type: ignore[arg-type]
               wall=kwargs.pop("wall", clock), transport=transport, cdn_transport=transport,
               state_dir=state_dir, **kwargs)


def drive(bot: Bot, clock: ManualClock, seconds: float,
          after_job: Callable[[str], None] | None = None) -> None:
    """Run the bot's jobs as the scheduler would (each due every interval, never overlapping,
    late runs coalesced), on the manual clock, for ``seconds``. The rate limiter moves the clock
    while it waits, so jobs take simulated time."""
    jobs = bot.jobs()
    end = clock.now() + seconds
    due = {job.id: clock.now() for job in jobs}
    while True:
        job = min(jobs, key=lambda j: due[j.id])
        if due[job.id] > end:
            break
        if clock.now() < due[job.id]:
            clock.set(due[job.id])
        job.func()
        while due[job.id] <= clock.now():
            due[job.id] += job.interval
        if after_job is not None:
            after_job(job.id)
    if clock.now() < end:
        clock.set(end)


def ours(market: SimMarket) -> list[Order]:
    """Our open orders at the exchange."""
    return [o for o in market.orders_of(KEY) if o.open]


def assert_one_per_server(market: SimMarket) -> None:
    venues = Counter(o.venue_id for o in ours(market))
    doubled = {v: n for v, n in venues.items() if n > 1}
    assert not doubled, f"two live orders of ours on one server: {doubled}"


def book(database: Database, *, states: tuple[str, ...] = ("creating", "pending", "unknown",
                                                           "live")) -> list[BotOrder]:
    with database.sessions() as session:
        return list(session.scalars(select(BotOrder).where(BotOrder.state.in_(states),
                                                           BotOrder.dry_run.is_(False))))


def assert_books_agree(market: SimMarket, database: Database) -> None:
    """Every exchange order of ours is open in the database with its id, and vice versa; nothing
    is left in flight."""
    in_flight = [(o.id, o.state, o.server_id) for o in book(database)
                 if o.state != "live"]
    assert not in_flight, f"orders still in flight after reconciliation: {in_flight}"
    exchange = {o.id: o.venue_id for o in ours(market)}
    known = {o.order_id: o.server_id for o in book(database)}
    assert exchange == known


def assert_invariants(market: SimMarket, database: Database) -> InvariantReport:
    """The simulator's invariant report (``bidder.sim.invariants``) for our key: the books agree,
    no server carries two bids of ours, no rate-limit or 600-s refusal; and no order the bot
    placed was taken for someone else's (``bidder.reconcile.APPEARED``: only the bot uses the key
    in these tests, so such an order would be its own, left unmanaged)."""
    report = invariant_report(market, database, [KEY])
    assert report.ok, report.text()
    with database.sessions() as session:
        appeared = session.scalars(select(BotOrderEvent.order_ref).where(
            BotOrderEvent.kind == APPEARED)).all()
    assert not appeared, f"orders of ours taken for someone else's: local ids {appeared}"
    return report

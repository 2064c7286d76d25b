"""``bidder status``: what the bot holds, what it spends and whether it is alive, from the database.

Reads only the database (opened as a reader, never migrated), so it works while the bot writes and
needs no config beyond finding the file: the bot records the targets, budget and rules it runs with.
Healthy means the newest run's heartbeat is younger than its ``heartbeat_stale_after`` (wall clock);
the exit status says so for monitors.

Times shown are the bot's clock (accelerated in a simulation); ages are in bot seconds, estimated
from the heartbeat (its bot time and wall time) and the run's speed.

The queries are plain SQL through ``storage.reader`` (no SQLAlchemy, pydantic or numpy: a monitor
calls ``bidder status`` every minute), on a read-only connection of its own or, in the running bot
(``bidder.oversight``), on its ORM session's connection: one implementation for both.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bidder.book import APPEARED, read_open_orders, strategy_state
from bidder.clock import Clock
from bidder.config_file import CLORE
from bidder.lowering import next_lower_at, stored_rules
from bidder.plain import plain
from bidder.spend import cost_per_day
from storage.reader import Reader, json_value, reader_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

HOUR = 3600.0
LAST_ERRORS = 10
LAST_ALERTS = 10
POLL_ENDPOINTS = ("get_gigaspot", "spot_marketplace", "marketplace")
LAST_POLL_SQL = "SELECT max(finished_at) FROM api_call WHERE endpoint = ? AND outcome = 'ok'"


@dataclass(frozen=True, slots=True)
class OrderLine:
    local_id: int
    order_id: int | None
    target: str | None
    """None: adopted and unmanaged."""
    market: str
    server_id: int
    gpus: int
    price: float
    currency: str
    usd_per_day: float | None
    """Price in USD per day at the recorded rates (None: rate unknown)."""
    state: str
    """``winning``, ``outbid``, ``pending`` or ``unknown``."""
    next_lower_at: float | None
    """When the rules next allow a lowering (None for orders in flight)."""
    adopted: bool
    foreign: bool = False
    """Unmanaged because it appeared while the bot ran and the bot did not place it (a person or
    another bot uses the key: ``bidder.reconcile.APPEARED``)."""


@dataclass(frozen=True, slots=True)
class TargetLine:
    name: str
    market: str
    unit: str
    wanted: int
    held: int
    """GPUs (or servers) of orders winning now."""
    orders: int
    strategy: str


@dataclass(frozen=True, slots=True)
class NextStep:
    target: str
    server_id: int
    wanted_price: float | None
    reason: str
    not_before: float | None
    text: str


@dataclass(slots=True)
class Status:
    database: str
    healthy: bool
    summary: str
    run: dict[str, Any] | None = None
    heartbeat_age: float | None = None
    """Wall seconds since the last heartbeat."""
    stale_after: float | None = None
    bot_time: float | None = None
    targets: list[TargetLine] = field(default_factory=list)
    orders: list[OrderLine] = field(default_factory=list)
    spend_per_day: float | None = None
    budget_per_day: float | None = None
    budget_currency: str | None = None
    ages: dict[str, float | None] = field(default_factory=dict)
    """Bot seconds since the last GigaSPOT snapshot, spot poll, marketplace listing, API poll."""
    calls_last_hour: int = 0
    rate_limited_last_hour: int = 0
    failed_calls_last_hour: int = 0
    last_cycle: dict[str, Any] | None = None
    next_steps: list[NextStep] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """The last alerts raised (newest first), with what became of their sending."""
    lease: dict[str, Any] | None = None
    """Who holds the one-bot lease (``bidder.lease``): run, mode, pid, host, wall seconds since
    its heartbeat; None when it is free (a bot stopped cleanly, or none ever ran)."""

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1


def _usd_rates(db: Reader) -> dict[str, float]:
    rates = json_value(db.scalar("SELECT rates FROM currency_rates ORDER BY id DESC LIMIT 1"))
    out = {str(k): float(v) for k, v in (rates or {}).items()}
    clore = db.scalar("SELECT clore_price FROM gigaspot_snapshot ORDER BY id DESC LIMIT 1")
    if clore is not None:
        out[CLORE] = float(clore)
    out.setdefault("USD-Blockchain", 1.0)
    out["USD"] = 1.0
    return out


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else max(0.0, now - float(then))


def fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def fmt_utc(t: float) -> str:
    """A moment as a message outside ``bidder status`` names it: UTC, said so."""
    return f"{fmt_time(t)} UTC"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 300:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def market_ages(ages: dict[str, float | None]) -> str:
    """How old each kind of market data is, in words ("no spot poll yet" before the first)."""
    parts = []
    for key, name, suffix in (("gigaspot_snapshot", "GigaSPOT snapshot", "old"),
                              ("spot_poll", "last spot poll", "ago"),
                              ("marketplace_listing", "listing", "old"),
                              ("api_poll", "last API poll", "ago")):
        age = ages.get(key)
        parts.append(f"{name} {fmt_age(age)} {suffix}" if age is not None else
                     f"no {name.removeprefix('last ')} yet")
    return ", ".join(parts)


def _next_text(d: dict[str, Any], now: float) -> str:
    price = d.get("wanted_price")
    at = d.get("not_before")
    server = d["server_id"]
    when = f" at {fmt_time(at)} (in {fmt_age(_age(at, now))})" if at is not None and at > now \
        else ""
    reason = d["reason"]
    if price is None:
        return f"will cancel on {server} once its outcome is known ({reason})"
    if reason == "cooldown":
        return f"will lower {server} to {price:.6g}{when} (cooldown)"
    if reason == "step":
        return f"will keep lowering {server} towards {price:.6g}{when} (one step at a time)"
    words = {"cap": "above the cap", "floor_above_cap": "its floor is above the cap",
             "budget": "waits for room in the budget", "rate_unknown": "the USD rate is unknown",
             "in_flight": "waits until the order's outcome is known",
             "server_taken": "another of our orders holds it",
             "not_eligible": "the server does not qualify now",
             "watching": "waits for the first full round of spot polls (buys nothing before)"}
    return f"wants {server} at {price:.6g}: {words.get(reason, reason)}"


RUN_COLUMNS = ("id", "mode", "started_at", "started_wall", "speed", "pid", "config",
               "heartbeat_at", "heartbeat_wall", "stopped_at", "stop_reason")


def collect(source: Reader | Session, database: str, wall: Clock, *,
            brief: bool = False) -> Status:
    """Everything ``bidder status`` shows, from ``source`` (a ``storage.reader.Reader``, or an ORM
    session read through its connection); ``brief``: only the run, targets, orders and spend (what
    a running bot checks after each cycle)."""
    db = reader_of(source)
    row = db.row(f"SELECT {', '.join(RUN_COLUMNS)} FROM bot_run ORDER BY id DESC LIMIT 1")
    if row is None:
        return Status(database, False, "no bot run recorded in this database")
    run = dict(zip(RUN_COLUMNS, row))
    cfg = json_value(run["config"])
    stale_after = float(cfg["bot"]["heartbeat_stale_after"])
    wall_now = wall.now()
    started_at, started_wall, speed = (float(run["started_at"]), float(run["started_wall"]),
                                       float(run["speed"]))
    heartbeat_wall, stopped_at = run["heartbeat_wall"], run["stopped_at"]
    hb_age = None if heartbeat_wall is None else max(0.0, wall_now - heartbeat_wall)
    if stopped_at is not None:
        bot_now = stopped_at
        healthy, summary = False, f"not running: stopped at {fmt_time(stopped_at)} " \
                                  f"({run['stop_reason']})"
    elif heartbeat_wall is None or hb_age is None:
        bot_now = started_at + (wall_now - started_wall) * speed
        healthy = wall_now - started_wall <= stale_after
        summary = "starting: no heartbeat yet" if healthy else "no heartbeat since the start"
    else:
        bot_now = (run["heartbeat_at"] or started_at) + hb_age * speed
        healthy = hb_age <= stale_after
        summary = f"running: last heartbeat {fmt_age(hb_age)} ago" if healthy else \
            f"STALE: last heartbeat {fmt_age(hb_age)} ago (limit {fmt_age(stale_after)})"
    status = Status(database, healthy, summary, heartbeat_age=hb_age, stale_after=stale_after,
                    bot_time=bot_now,
                    run={"id": run["id"], "mode": run["mode"], "started_at": started_at,
                         "pid": run["pid"], "speed": speed, "stopped_at": stopped_at,
                         "stop_reason": run["stop_reason"]})
    markets = cfg["markets"]
    rates = _usd_rates(db)
    _orders(db, status, markets, rates, dry_run=run["mode"] == "dry-run")
    _targets(status, cfg["targets"])
    _budget(status, cfg["budget"], markets, rates)
    if brief:
        return status
    _market_and_calls(db, status, bot_now)
    _cycle(db, status, run["id"], bot_now)
    status.lease = _lease(db, wall_now)
    status.errors = [{"at": at, "level": level, "source": source, "message": message}
                     for at, level, source, message in db.rows(
                         "SELECT at, level, source, message FROM bot_log ORDER BY id DESC "
                         "LIMIT ?", (LAST_ERRORS,))]
    status.alerts = [{"at": at, "event": event, "title": title, "body": body,
                      "delivery": delivery}
                     for at, event, title, body, delivery in db.rows(
                         "SELECT at, event, title, body, delivery FROM bot_alert "
                         "ORDER BY id DESC LIMIT ?", (LAST_ALERTS,))]
    return status


def _orders(db: Reader, status: Status, markets: dict[str, Any], rates: dict[str, float],
            *, dry_run: bool) -> None:
    rows = sorted(read_open_orders(db, dry_run=dry_run),
                  key=lambda o: (o.target is not None, o.target or "", o.server_id))
    unmanaged = [o.id for o in rows if o.target is None]
    foreign = {int(r[0]) for r in db.rows(
        "SELECT order_ref FROM bot_order_event WHERE kind = ? AND order_ref IN "
        f"({', '.join('?' * len(unmanaged))})", (APPEARED, *unmanaged))} if unmanaged else set()
    for o in rows:
        rate = rates.get(o.currency)
        state = strategy_state(o)
        settled = o.state == "live"
        status.orders.append(OrderLine(
            local_id=o.id, order_id=o.order_id, target=o.target, market=o.market,
            server_id=o.server_id, gpus=o.gpus, price=o.price, currency=o.currency,
            usd_per_day=o.price * rate if rate is not None else None, state=state,
            next_lower_at=next_lower_at(o.created_at, o.last_lowered_at, o.told_next_lower_at,
                                        stored_rules(markets, o.market)) if settled else None,
            adopted=o.adopted, foreign=o.id in foreign))


def _targets(status: Status, targets: list[dict[str, Any]]) -> None:
    for t in targets:
        mine = [o for o in status.orders if o.target == t["name"]]
        held = sum((o.gpus if t["unit"] == "gpus" else 1) for o in mine if o.state == "winning")
        status.targets.append(TargetLine(t["name"], t["market"], t["unit"], t["count"], held,
                                         len(mine), t["strategy"]))


def _budget(status: Status, budget: dict[str, Any], markets: dict[str, Any],
            rates: dict[str, float]) -> None:
    currency = budget["currency"]
    status.budget_currency = currency
    status.budget_per_day = budget.get("max_per_day")
    total = sum((cost_per_day(o.price, stored_rules(markets, o.market).fee_fraction, o.currency,
                              currency, rates.get) for o in status.orders), 0.0)
    status.spend_per_day = total if math.isfinite(total) else None


def _lease(db: Reader, wall_now: float) -> dict[str, Any] | None:
    """The lease's holder: a second bot on this database is refused while it is held and fresh,
    so a monitor sees which process that is (a stale one is taken over by the next bot)."""
    row = db.row("SELECT run_id, mode, pid, host, heartbeat_wall FROM bot_lease "
                 "WHERE name = 'bot' AND token IS NOT NULL")
    if row is None:
        return None
    run_id, mode, pid, host, heartbeat_wall = row
    return {"run_id": run_id, "mode": mode, "pid": pid, "host": host,
            "heartbeat_age": _age(wall_now, heartbeat_wall)}


def _last_poll(db: Reader) -> float | None:
    """When a poll last succeeded: one descent of the index of API calls (schema 7) per
    endpoint, on both backends; a ``max`` over ``endpoint IN (...)`` may read every matching
    index entry, and the journal grows by a row a second for the bot's whole life."""
    last = [db.scalar(LAST_POLL_SQL, (endpoint,)) for endpoint in POLL_ENDPOINTS]
    return max((t for t in last if t is not None), default=None)


def _market_and_calls(db: Reader, status: Status, now: float) -> None:
    status.ages = {
        "gigaspot_snapshot": _age(now, db.scalar("SELECT max(time) FROM gigaspot_snapshot")),
        "spot_poll": _age(now, db.scalar("SELECT max(polled_at) FROM spot_poll")),
        "marketplace_listing": _age(now, db.scalar(
            "SELECT max(taken_at) FROM marketplace_listing")),
        "api_poll": _age(now, _last_poll(db)),
    }
    calls = "SELECT count(*) FROM api_call WHERE started_at >= ? AND cdn = ?"
    since = (now - HOUR, False)
    status.calls_last_hour = int(db.scalar(calls, since) or 0)
    status.rate_limited_last_hour = int(db.scalar(
        f"{calls} AND outcome = 'rate_limited'", since) or 0)
    status.failed_calls_last_hour = int(db.scalar(f"{calls} AND outcome <> 'ok'", since) or 0)


def _cycle(db: Reader, status: Status, run_id: int, now: float) -> None:
    last = db.row("SELECT id, at, skipped, actions FROM bot_cycle WHERE run_id = ? "
                  "ORDER BY id DESC LIMIT 1", (run_id,))
    if last is None:
        return
    status.last_cycle = dict(zip(("id", "at", "skipped", "actions"), last))
    decided = db.scalar("SELECT id FROM bot_cycle WHERE run_id = ? AND skipped IS NULL "
                        "ORDER BY id DESC LIMIT 1", (run_id,))
    if decided is None:
        return
    for target, deferred in db.rows("SELECT target, deferred FROM bot_decision "
                                    "WHERE cycle_id = ? ORDER BY target", (decided,)):
        for d in json_value(deferred):
            status.next_steps.append(NextStep(target, d["server_id"], d["wanted_price"],
                                              d["reason"], d["not_before"], _next_text(d, now)))


# --- output ----------------------------------------------------------------------------------


def to_json(status: Status) -> str:
    return json.dumps(plain({**asdict(status), "exit_code": status.exit_code}), indent=2)


def _money(value: float | None, digits: int = 2) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    return [line, *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)]


def render(status: Status) -> str:
    """The table for people."""
    out = [f"bidder status: {status.summary}", f"database: {status.database}"]
    if status.run is None:
        return "\n".join(out)
    run = status.run
    speed = f", {run['speed']:g}x speed" if run["speed"] != 1 else ""
    out.append(f"run {run['id']} ({run['mode']}{speed}) started {fmt_time(run['started_at'])}, "
               f"pid {run['pid']}; bot time {fmt_time(status.bot_time)}")
    if status.lease is not None:
        lease = status.lease
        out.append(f"lease: held by run {lease['run_id']} ({lease['mode']}, pid {lease['pid']} on "
                   f"{lease['host']}), last heartbeat {fmt_age(lease['heartbeat_age'])} ago")
    else:
        out.append("lease: free (no bot holds this database)")
    out.append("")
    if status.targets:
        out += _table(["target", "market", "held / wanted", "orders", "strategy"],
                      [[t.name, t.market, f"{t.held} / {t.wanted} {t.unit}", str(t.orders),
                        t.strategy] for t in status.targets])
    else:
        out.append("no targets")
    out.append("")
    if status.orders:
        now = status.bot_time or 0.0
        out += _table(["order", "target", "market", "server", "GPUs", "price/day", "USD/day",
                       "state", "next lowering"],
                      [[str(o.order_id if o.order_id is not None else "-"),
                        o.target or ("(not the bot's)" if o.foreign else "(unmanaged)"), o.market, str(o.server_id), str(o.gpus),
                        f"{o.price:.6g} {o.currency.removesuffix('-Blockchain')}",
                        _money(o.usd_per_day), o.state,
                        "-" if o.next_lower_at is None else
                        ("now" if o.next_lower_at <= now else
                         f"{fmt_time(o.next_lower_at)[11:]} (in {fmt_age(o.next_lower_at - now)})")]
                       for o in status.orders])
    else:
        out.append("no open orders")
    out.append("")
    budget = "no limit" if status.budget_per_day is None else \
        f"{status.budget_per_day:g} {status.budget_currency}"
    out.append(f"spend: {_money(status.spend_per_day)} {status.budget_currency}/day "
               f"(all bids as if winning, fees included); budget {budget}")
    out.append("market data: " + market_ages(status.ages))
    out.append(f"API calls in the last hour: {status.calls_last_hour} "
               f"({status.rate_limited_last_hour} rate-limited, "
               f"{status.failed_calls_last_hour} not ok)")
    if status.last_cycle is not None:
        c = status.last_cycle
        what = f"skipped: {c['skipped']}" if c["skipped"] else f"{c['actions']} actions"
        out.append(f"last cycle: {fmt_time(c['at'])} ({what})")
    if status.next_steps:
        out.append("next:")
        out += [f"  {s.target}: {s.text}" for s in status.next_steps]
    if status.alerts:
        out.append("recent alerts:")
        out += [f"  {fmt_time(a['at'])} {a['event']}: {a['title']} ({a['delivery']})"
                for a in status.alerts]
    if status.errors:
        out.append("last problems:")
        out += [f"  {fmt_time(e['at'])} {e['level']} {e['source']}: {e['message']}"
                for e in status.errors]
    return "\n".join(out)

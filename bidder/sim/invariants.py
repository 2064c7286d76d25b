"""The simulator's invariant report: what the exchange holds of ours against the bot's database,
and the rules the bot's calls broke.

``invariant_report`` returns it as data (tests assert on it); ``InvariantReport.text`` is the form
``bidder sim --check-db`` prints. It checks:

- our open orders at the exchange against the database's open orders: unknown to the database, open
  at the exchange but closed in the database, open in the database but gone at the exchange, and
  orders still in flight in the database;
- our bids per server (never two of ours on one server);
- code-5 (rate limit) replies the market itself gave (injected faults are counted apart);
- lowerings refused for going too far (``exceeded_max_step``) or too soon (600 s).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select

from bidder.sim.market import SimMarket
from storage.db import Database
from storage.models import BotOrder

OPEN_STATES = ("creating", "pending", "unknown", "live")
TOO_FAR = "exceeded_max_step"
TOO_SOON = "can_lower_every_600_seconds"


@dataclass
class InvariantReport:
    keys: int
    """API keys that called the market."""
    open_at_exchange: int
    checked_db: bool
    unknown_to_db: list[tuple[int, int]] = field(default_factory=list)
    """(order id, server id): open at the exchange, no row in the database."""
    closed_in_db: list[tuple[int, int]] = field(default_factory=list)
    """Open at the exchange, closed or failed in the database."""
    gone_at_exchange: list[tuple[int, int]] = field(default_factory=list)
    """Open (live) in the database, not open at the exchange."""
    in_flight: list[tuple[int | None, int, str]] = field(default_factory=list)
    """(order id, server id, state) still creating, pending or unknown in the database."""
    doubled: dict[int, int] = field(default_factory=dict)
    """Server id -> how many open bids of ours it carries, where more than one."""
    code_5: int = 0
    http_429: int = 0
    too_fast: list[tuple[str, float, str | None]] = field(default_factory=list)
    """Each rate-limited request: endpoint, seconds after the last accepted one, its endpoint."""
    too_far: int = 0
    """Lowerings refused with ``exceeded_max_step`` (the bot learns the step from the first)."""
    too_soon: int = 0
    """Lowerings refused with ``can_lower_every_600_seconds``."""
    faults: Counter[str] = field(default_factory=Counter)

    @property
    def books_agree(self) -> bool:
        return not (self.unknown_to_db or self.closed_in_db or self.gone_at_exchange
                    or self.in_flight)

    @property
    def ok(self) -> bool:
        """Nothing broken: the books agree, no doubled server, no rate-limit or 600-s refusal."""
        return self.books_agree and not self.doubled and not self.code_5 and not self.http_429 \
            and not self.too_soon

    def text(self) -> str:
        def ids(rows: list[tuple[int, int]]) -> str:
            return ", ".join(f"{o} on {s}" for o, s in rows[:10]) + (", ..." if len(rows) > 10
                                                                    else "")

        lines = [f"invariant report: {'OK' if self.ok else 'BROKEN'} "
                 f"({self.open_at_exchange} open orders of ours at the exchange, "
                 f"{self.keys} API keys)"]
        if self.checked_db:
            lines += [f"  unknown to the database: {len(self.unknown_to_db)}"
                      + (f" ({ids(self.unknown_to_db)})" if self.unknown_to_db else ""),
                      f"  open at the exchange, closed in the database: {len(self.closed_in_db)}"
                      + (f" ({ids(self.closed_in_db)})" if self.closed_in_db else ""),
                      f"  open in the database, gone at the exchange: "
                      f"{len(self.gone_at_exchange)}"
                      + (f" ({ids(self.gone_at_exchange)})" if self.gone_at_exchange else ""),
                      f"  still in flight in the database: {len(self.in_flight)}"]
        else:
            lines.append("  database: not checked (bidder sim --check-db URL)")
        doubled = ", ".join(f"{s}: {n}" for s, n in sorted(self.doubled.items()))
        lines += [f"  servers with two or more bids of ours: {len(self.doubled)}"
                  + (f" ({doubled})" if doubled else ""),
                  f"  rate-limit replies: {self.code_5} code 5, {self.http_429} HTTP 429"
                  + "".join(f"; {name} {since:.3f} s after {previous}"
                            for name, since, previous in self.too_fast[:5]),
                  f"  lowerings refused: {self.too_far} too far (max step), "
                  f"{self.too_soon} too soon (600 s)",
                  "  injected faults: " + (", ".join(f"{k} {n}" for k, n in
                                                     sorted(self.faults.items())) or "none")]
        return "\n".join(lines)


def invariant_report(market: SimMarket, database: Database | None,
                     keys: list[str] | None = None) -> InvariantReport:
    """Check ``market`` (the orders of ``keys``, default every key that called it) against the
    bot's ``database`` (None: the exchange side only)."""
    stats = market.stats
    keys = list(stats) if keys is None else keys
    keys = [k for k in keys if k]
    exchange = {o.id: o.venue_id for key in keys for o in market.orders_of(key) if o.open}
    report = InvariantReport(keys=len(keys), open_at_exchange=len(exchange),
                             checked_db=database is not None,
                             faults=Counter(market.faults.counts))
    venues = Counter(exchange.values())
    report.doubled = {v: n for v, n in venues.items() if n > 1}
    for key in keys:
        s = stats.get(key)
        if s is None:
            continue
        report.code_5 += s.codes[5] - s.http_429
        report.http_429 += s.http_429
        report.too_fast += s.too_fast
        report.too_far += s.errors[TOO_FAR]
        report.too_soon += s.errors[TOO_SOON]
    if database is None:
        return report
    with database.sessions() as session:
        rows = list(session.execute(select(BotOrder.order_id, BotOrder.server_id, BotOrder.state)
                                    .where(BotOrder.dry_run.is_(False))
                                    .order_by(BotOrder.id)))
    state_of: dict[int, str] = {}
    for order_id, _server_id, state in rows:
        if order_id is not None and state_of.get(order_id) not in OPEN_STATES:
            state_of[order_id] = state  # an open row wins over a closed one of the same id
    for order_id, server_id in sorted(exchange.items()):
        state = state_of.get(order_id)
        if state is None:
            report.unknown_to_db.append((order_id, server_id))
        elif state not in OPEN_STATES:
            report.closed_in_db.append((order_id, server_id))
    for order_id, server_id, state in rows:
        if state in OPEN_STATES and state != "live":
            report.in_flight.append((order_id, server_id, state))
        elif state == "live" and order_id not in exchange:
            report.gone_at_exchange.append((order_id, server_id))
    return report

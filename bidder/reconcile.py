"""Reconciliation: make the order book agree with what the exchange says it holds.

Run at start, every ``reconcile_interval``, and whenever an order is in flight (a create whose id
is not found yet, a call whose outcome is unknown). The exchange is the truth:

- ``my_orders`` (and, for GigaSPOT, our bids in the newest snapshot) list our open orders;
- an order of ours in the database but not at the exchange has ended: it is closed;
- a create not yet matched finds its order by server and creation time (``si`` and ``ct`` no
  earlier than the send time minus a slack, an id not already ours); one not found after a few
  reconciliations is marked failed, saying what was checked;
- an order at the exchange unknown to the database is adopted with a warning: assigned to the first
  target whose filters it matches, else kept unmanaged (shown by ``status``, touched only by
  ``cancel-all``).

``match`` decides (pure); ``Reconciler`` asks the exchange and applies the decision in one
transaction, so a crash half-way leaves the book as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bidder.api import CloreClient
from bidder.api.models import MyOrdersReply
from bidder.clock import Clock
from bidder.config import TargetConfig
from bidder.orders import (
    IN_FLIGHT_STATES,
    add_event,
    close,
    describe_price,
    keep_away,
    open_orders,
)
from bidder.view import static_match
from bidder.watchlist import listing_frame
from storage.frames import MarketFrame
from storage.market_views import gigaspot_frame
from storage.models import BotOrder, BotOrderEvent
from storage.spot_record import parse_gpu_spec

log = logging.getLogger(__name__)

Source = Literal["my_orders", "snapshot"]


@dataclass(frozen=True, slots=True)
class SeenOrder:
    """An open order of ours as the exchange shows it."""

    order_id: int
    server_id: int
    price: float | None
    currency: str | None
    created: float | None
    """``ct`` (UNIX seconds) from ``my_orders``; for a snapshot bid, the snapshot's time."""
    source: Source
    spend: float | None = None
    gpus: int | None = None


def seen_orders(reply: MyOrdersReply, snapshot: MarketFrame | None) -> list[SeenOrder]:
    """Our open bids (spot and GigaSPOT) in ``my_orders``, then those only the snapshot shows.

    On-demand rentals (``spot: false``) are not bids and are left out.
    """
    seen = [SeenOrder(o.id, int(o.si), o.price, o.currency,
                      float(o.ct) if o.ct is not None else None, "my_orders", o.spend,
                      parse_gpu_spec(o.specs.gpu if o.specs else None)[0])
            for o in reply.orders if o.si is not None and not o.expired and o.spot is not False]
    listed = {s.order_id for s in seen}
    if snapshot is not None and snapshot.n_servers:
        rows = snapshot.bid_server_rows()
        for i in np.flatnonzero(snapshot.bid_mine):
            order_id = int(snapshot.bid_id[i])
            if order_id not in listed:
                row = int(rows[i])
                seen.append(SeenOrder(order_id, int(snapshot.server_id[row]),
                                      float(snapshot.bid_price[i]), None, snapshot.time,
                                      "snapshot", None, int(snapshot.gpus[row])))
    return seen


@dataclass(slots=True)
class Matches:
    """What one reconciliation changes. Rows are identified by their local id."""

    present: list[tuple[int, SeenOrder]] = field(default_factory=list)
    """Orders with an id that the exchange still shows (their state, price and spend are synced)."""
    found: list[tuple[int, SeenOrder]] = field(default_factory=list)
    """Creates whose order was found."""
    gone: list[int] = field(default_factory=list)
    """Orders the exchange no longer shows."""
    not_found: list[int] = field(default_factory=list)
    """Creates whose order was not found this time (still within the grace)."""
    given_up: list[int] = field(default_factory=list)
    """Creates not found after the grace: failed."""
    adopt: list[SeenOrder] = field(default_factory=list)


def match(orders: Sequence[BotOrder], seen: Sequence[SeenOrder], *, closed_ids: set[int],
          touched: Mapping[int, float], slack: float, grace: int) -> Matches:
    """Pair our open ``orders`` with the exchange's ``seen`` orders.

    A snapshot is up to a minute old: ``closed_ids`` (ids of orders we already closed) and
    ``touched`` (local id -> when we last acted on the order) keep it from reviving an order we
    have cancelled since; only ``my_orders``, which is current, can.
    """
    out = Matches()
    by_id = {s.order_id: s for s in seen}
    ours = {o.order_id for o in orders if o.order_id is not None}
    for order in orders:
        if order.order_id is None:
            continue
        hit = by_id.get(order.order_id)
        if hit is not None and hit.source == "snapshot" \
                and (hit.created or 0.0) <= touched.get(order.id, 0.0):
            hit = None  # the snapshot predates our last call about it: it cannot tell
        if hit is None:
            out.gone.append(order.id)
        else:
            out.present.append((order.id, hit))
    claimed: set[int] = set()
    for order in sorted((o for o in orders if o.order_id is None),
                        key=lambda o: (o.sent_at or 0.0, o.id)):
        since = (order.sent_at if order.sent_at is not None else order.created_at) - slack
        candidates = sorted((s for s in seen if s.server_id == order.server_id
                             and s.order_id not in ours and s.order_id not in claimed
                             and (s.source == "my_orders" or s.order_id not in closed_ids)
                             and (s.created is None or s.created >= since)),
                            key=lambda s: (s.source != "my_orders", s.created or 0.0, s.order_id))
        if candidates:
            claimed.add(candidates[0].order_id)
            out.found.append((order.id, candidates[0]))
        elif order.lookups + 1 >= grace:
            out.given_up.append(order.id)
        else:
            out.not_found.append(order.id)
    out.adopt = [s for s in seen if s.order_id not in ours and s.order_id not in claimed
                 and (s.source == "my_orders" or s.order_id not in closed_ids)]
    return out


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an adopted order belongs: its market (a GigaSPOT machine or a spot server) and the
    first target whose filters its server matches, from the newest recorded market data."""

    targets: Sequence[TargetConfig]
    gigaspot: MarketFrame | None
    spot: MarketFrame | None

    def market_of(self, server_id: int) -> str:
        giga = self.gigaspot
        return "gigaspot" if giga is not None and giga.row(server_id) is not None else "spot"

    def target_of(self, market: str, server_id: int, currency: str | None) -> str | None:
        frame = self.gigaspot if market == "gigaspot" else self.spot
        row = frame.row(server_id) if frame is not None else None
        if frame is None or row is None:
            return None
        for target in self.targets:
            if (target.market == market and currency in (None, target.currency)
                    and bool(static_match(frame, target)[row])):
                return target.name
        return None

    def gpus_of(self, market: str, server_id: int) -> int | None:
        frame = self.gigaspot if market == "gigaspot" else self.spot
        row = frame.row(server_id) if frame is not None else None
        return int(frame.gpus[row]) if frame is not None and row is not None else None


def load_placement(session: Session, targets: Sequence[TargetConfig]) -> Placement:
    giga = gigaspot_frame(session)
    return Placement(targets, giga if giga.n_servers else None, listing_frame(session))


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    present: int
    found: int
    closed: int
    failed: int
    adopted: int
    still_looking: int


class Reconciler:
    """Asks ``my_orders`` (reconcile priority) and brings the order book in line with it."""

    def __init__(self, client: CloreClient, sessions: sessionmaker[Session], clock: Clock,
                 targets: Sequence[TargetConfig], *, slack: float = 120.0, grace: int = 3,
                 ended_block: float = 3600.0) -> None:
        self._client = client
        self._sessions = sessions
        self._clock = clock
        self._targets = targets
        self.slack = slack
        self.grace = grace
        self.ended_block = ended_block
        """Seconds a target keeps away from a server whose order the exchange ended (rented on
        demand, offline, expired): bidding there again at once would only wait."""

    def reconcile(self) -> ReconcileReport:
        """One reconciliation. Raises the client's errors (nothing is changed then).

        Completed orders are asked for only while one of ours ended without its final spend:
        the spend stored at its last sync misses the time since, and costs (``bidder status``,
        ``--replay-diff``) would come out too low."""
        with self._sessions() as session:
            unsettled = awaiting_final_spend(session, self._clock.now())
        reply = self._client.my_orders(return_completed=bool(unsettled))
        now = self._clock.now()
        with self._sessions.begin() as session:
            if unsettled:
                settle_final_spend(session, reply, unsettled, now)
            placement = load_placement(session, self._targets)
            seen = seen_orders(reply, placement.gigaspot)
            orders = open_orders(session, dry_run=False)
            snapshot_ids = [s.order_id for s in seen if s.source == "snapshot"]
            closed_ids = set(session.scalars(select(BotOrder.order_id).where(
                BotOrder.order_id.in_(snapshot_ids), BotOrder.state.in_(("closed", "failed")))))
            touched = {ref: at for ref, at in session.execute(
                select(BotOrderEvent.order_ref, func.max(BotOrderEvent.at))
                .where(BotOrderEvent.order_ref.in_([o.id for o in orders]))
                .group_by(BotOrderEvent.order_ref))}
            m = match(orders, seen, closed_ids=closed_ids, touched=touched, slack=self.slack,
                      grace=self.grace)
            rows = {o.id: o for o in orders}
            for local_id, hit in m.present:
                _sync(session, rows[local_id], hit, now)
            for local_id, hit in m.found:
                _found(session, rows[local_id], hit, now)
            for local_id in m.gone:
                order = rows[local_id]
                log.info("order %s on server %d is gone at Clore; closed", order.order_id,
                         order.server_id)
                close(session, order, now, "gone at Clore")
                if order.target is not None:
                    keep_away(session, order.server_id, order.target, "ended at Clore",
                              now + self.ended_block, now)
            for local_id in m.not_found:
                rows[local_id].lookups += 1
            for local_id in m.given_up:
                _give_up(session, rows[local_id], now, self.slack)
            for hit in m.adopt:
                _adopt(session, hit, placement, now)
            _assign_unmanaged(session, [o for o in orders if o.target is None and o.adopted],
                              placement, now)
        return ReconcileReport(len(m.present), len(m.found), len(m.gone), len(m.given_up),
                               len(m.adopt), len(m.not_found))


FINAL_SPEND_WINDOW = 2 * 86_400.0
"""Seconds after an order ended that its final spend is still asked for (the exchange may stop
listing old completed orders)."""


def awaiting_final_spend(session: Session, now: float) -> list[int]:
    """Exchange ids of our orders that ended lately and whose final spend is not recorded yet."""
    settled = select(BotOrderEvent.order_ref).where(BotOrderEvent.kind == "final_spend")
    return list(session.scalars(select(BotOrder.order_id).where(
        BotOrder.state.in_(("closed", "failed")), BotOrder.order_id.is_not(None),
        BotOrder.dry_run.is_(False), BotOrder.closed_at >= now - FINAL_SPEND_WINDOW,
        BotOrder.id.not_in(settled))))


def settle_final_spend(session: Session, reply: MyOrdersReply, unsettled: Sequence[int],
                       now: float) -> None:
    """Record the final spend of our ended orders ``unsettled`` (exchange ids) that ``reply``
    lists as completed."""
    final = {o.id: o.spend for o in reply.orders if o.expired and o.spend is not None}
    wanted = [order_id for order_id in unsettled if order_id in final]
    for order in session.scalars(select(BotOrder).where(BotOrder.order_id.in_(wanted))):
        order.spend = final[order.order_id]
        add_event(session, order, "final_spend", now, order.price, spend=order.spend)


def _sync(session: Session, order: BotOrder, hit: SeenOrder, now: float) -> None:
    """The exchange shows ``order``: take its price and spend; an unknown outcome is settled.

    A snapshot may be older than our last price change, so its price is taken only to settle an
    unknown outcome."""
    trusted = hit.source == "my_orders" or order.state == "unknown"
    if trusted and hit.price is not None and hit.price != order.price:
        lowered = hit.price < order.price
        add_event(session, order, "lowered" if lowered else "raised", now, hit.price,
                  source=hit.source, reconciled=True)
        if lowered:
            order.last_lowered_at = now  # when it happened is unknown: count the cooldown from now
        order.price = hit.price
    if hit.spend is not None:
        order.spend = hit.spend
    if order.state != "live":
        add_event(session, order, "resolved", now, order.price, source=hit.source)
        order.state = "live"


def _found(session: Session, order: BotOrder, hit: SeenOrder, now: float) -> None:
    if order.state != "pending":  # the reply was never read: count the cooldown from now
        order.created_at = now
    order.order_id = hit.order_id
    order.confirmed_at = now
    order.state = "live"
    if hit.price is not None:
        order.price = hit.price
    if hit.spend is not None:
        order.spend = hit.spend
    add_event(session, order, "confirmed", now, order.price, order_id=hit.order_id,
              source=hit.source)
    log.info("found %s order %d on server %d at %s", order.market, hit.order_id, order.server_id,
             describe_price(order.price, order.currency))


def _give_up(session: Session, order: BotOrder, now: float, slack: float) -> None:
    since = (order.sent_at if order.sent_at is not None else order.created_at) - slack
    log.warning("the %s create on server %d (sent at %.0f) was not found after %d reconciliations "
                "(my_orders: no order of ours with si=%d and ct >= %.0f; snapshot: no bid of ours "
                "on it); marked failed", order.market, order.server_id, order.sent_at or 0.0,
                order.lookups + 1, order.server_id, since)
    close(session, order, now, "create not found at Clore", state="failed")


def _adopt(session: Session, hit: SeenOrder, placement: Placement, now: float) -> None:
    market = "gigaspot" if hit.source == "snapshot" else placement.market_of(hit.server_id)
    target = placement.target_of(market, hit.server_id, hit.currency)
    gpus = placement.gpus_of(market, hit.server_id) or hit.gpus or 1
    order = BotOrder(target=target, market=market, server_id=hit.server_id, order_id=hit.order_id,
                     state="live", price=hit.price or 0.0,
                     currency=hit.currency or "CLORE-Blockchain", gpus=gpus, oc=None, sent_at=None,
                     created_at=now, confirmed_at=now, adopted=True, dry_run=False,
                     spend=hit.spend, lookups=0)
    session.add(order)
    session.flush()
    add_event(session, order, "adopted", now, order.price, order_id=hit.order_id,
              target=target, source=hit.source)
    log.warning("adopted %s order %d on server %d (%s) that the database did not know: %s",
                market, hit.order_id, hit.server_id, describe_price(order.price, order.currency),
                f"assigned to target {target!r}" if target else
                "no target matches it; kept unmanaged (only cancel-all touches it)")


def _assign_unmanaged(session: Session, orders: Sequence[BotOrder], placement: Placement,
                      now: float) -> None:
    """Give adopted orders without a target one, once their server is in the market data."""
    for order in orders:
        if order.state != "live":
            continue
        target = placement.target_of(order.market, order.server_id, order.currency)
        if target is not None:
            order.target = target
            add_event(session, order, "assigned", now, order.price, target=target)
            log.info("adopted order %s on server %d assigned to target %r", order.order_id,
                     order.server_id, target)


def in_flight(session: Session) -> bool:
    """Whether any real order waits for reconciliation (id not found, or an outcome unknown)."""
    return session.scalar(select(BotOrder.id).where(BotOrder.state.in_(IN_FLIGHT_STATES),
                                                    BotOrder.dry_run.is_(False)).limit(1)) \
        is not None


"""Reconciliation: make the order book agree with what the exchange says it holds.

Run at start, every ``reconcile_interval``, and whenever an order is in flight (a create whose id
is not found yet, a call whose outcome is unknown). The exchange is the truth:

- ``my_orders`` (and, for GigaSPOT, our bids in the newest snapshot) list our open orders;
- an order is closed only on evidence newer than our last call about it: ``my_orders`` (current)
  no longer listing a spot order or listing it ended, or a GigaSPOT snapshot taken after the call
  without it. A snapshot older than the call says nothing either way;
- an order we closed that ``my_orders`` or a snapshot newer than the close shows open is re-opened;
- a create not yet matched finds its order by server and creation time (``si`` and ``ct`` no
  earlier than the send time minus a slack, an id not already ours); one not found within its
  grace (time since the reply and, for GigaSPOT, snapshots taken since) is marked failed, saying
  what was checked;
- an order at the exchange unknown to the database is adopted with a warning: assigned to the first
  target whose filters it matches, else kept unmanaged (shown by ``status``, touched only by
  ``cancel-all``). One that appears while the bot runs (after this process's first
  reconciliation), or that ``my_orders`` says was created while no bot of this database ran
  (after the last sign of life of the run before, ``last_watched``), on a server where no create
  of ours went unfound lately, was placed by something else using the key (a person, another
  bot): it is kept unmanaged for good, so the bot neither cancels it nor fights over it, and
  marked ``appeared`` for the alert.

``match`` decides (pure); ``Reconciler`` asks the exchange and applies the decision in one
transaction, so a crash half-way leaves the book as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from bidder.api import CloreClient
from bidder.api.models import MyOrdersReply
from bidder.clock import Clock
from bidder.config import TargetConfig
from bidder.book import APPEARED
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
from storage.models import BotOrder, BotOrderEvent, BotRun, GigaspotSnapshot, ServerBlock
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


RENTAL_ONLY_FIELDS: tuple[str, ...] = ()
"""``my_orders`` fields that only on-demand rentals carry. None is known yet: how GigaSPOT orders
appear there is not published, so a ``spot: false`` row is kept unless something known says it is
a rental (see ``may_be_ours``)."""


def may_be_ours(order: object, *, gigaspot_servers: Collection[int],
                gigaspot_ids: Collection[int], spot_servers: Collection[int]) -> bool:
    """Whether a ``my_orders`` row flagged ``spot: false`` may still be one of our bids.

    GigaSPOT orders may carry ``spot: false`` (unpublished), so such a row is dropped as an
    on-demand rental only when everything known says so: its server is not a GigaSPOT machine in
    the recorded snapshots, its id is none of our GigaSPOT orders, and it is a known spot server
    (or carries a field only rentals carry)."""
    server_id = int(getattr(order, "si"))
    if server_id in gigaspot_servers or getattr(order, "id") in gigaspot_ids:
        return True
    extra = getattr(order, "model_extra", None) or {}
    if any(name in extra for name in RENTAL_ONLY_FIELDS):
        return False
    return server_id not in spot_servers


def seen_orders(reply: MyOrdersReply, snapshot: MarketFrame | None, *,
                gigaspot_ids: Collection[int] = (),
                spot_servers: Collection[int] = ()) -> list[SeenOrder]:
    """Our open bids (spot and GigaSPOT) in ``my_orders``, then those only the snapshot shows.

    A ``spot: false`` row is left out as an on-demand rental only when ``may_be_ours`` says it
    cannot be a GigaSPOT order of ours (``gigaspot_ids``: ids of our GigaSPOT orders, open or
    closed; ``spot_servers``: servers known from the spot market)."""
    giga_servers: Collection[int] = set()
    if snapshot is not None and snapshot.n_servers:
        giga_servers = set(snapshot.server_id.tolist())
    ids = set(gigaspot_ids)
    spot = set(spot_servers)
    seen = [SeenOrder(o.id, int(o.si), o.price, o.currency,
                      float(o.ct) if o.ct is not None else None, "my_orders", o.spend,
                      parse_gpu_spec(o.specs.gpu if o.specs else None)[0])
            for o in reply.orders if o.si is not None and not o.expired
            and (o.spot is not False or may_be_ours(o, gigaspot_servers=giga_servers,
                                                    gigaspot_ids=ids, spot_servers=spot))]
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


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one reconciliation has to judge by, besides the orders it sees."""

    now: float
    snapshot_time: float | None = None
    """The newest recorded GigaSPOT snapshot's time (None: none recorded)."""
    ended: frozenset[int] = frozenset()
    """Ids ``my_orders`` lists as ended (``expired``)."""
    snapshots_after: Callable[[float], int] = lambda _t: 0
    """How many recorded GigaSPOT snapshots are newer than a time."""
    gigaspot_listed: bool = False
    """Whether this ``my_orders`` reply lists GigaSPOT orders (one of our known GigaSPOT ids is in
    it): then it is current evidence about them too. Unpublished, so learned from each reply."""


@dataclass(frozen=True, slots=True)
class CreateGrace:
    """How long a create may go unfound before it is marked failed: measured in time since the
    reply and, for GigaSPOT, in recorded snapshots newer than the reply (``my_orders`` may not
    list GigaSPOT orders at all), never in reconciliations (they may come seconds apart)."""

    seconds: float = 180.0
    snapshots: int = 2
    longest: float = 1800.0
    """Seconds after which a GigaSPOT create is failed even if no snapshot newer than it came
    (the exchange published none): without a limit it would stay in flight for ever."""


@dataclass(slots=True)
class Matches:
    """What one reconciliation changes. Rows are identified by their local id."""

    present: list[tuple[int, SeenOrder]] = field(default_factory=list)
    """Orders with an id that the exchange still shows (their state, price and spend are synced)."""
    found: list[tuple[int, SeenOrder]] = field(default_factory=list)
    """Creates whose order was found."""
    gone: list[int] = field(default_factory=list)
    """Orders the exchange no longer shows, on evidence newer than our last call about them."""
    unsure: list[int] = field(default_factory=list)
    """Orders nothing newer than our last call speaks about: left as they are."""
    not_found: list[int] = field(default_factory=list)
    """Creates whose order was not found this time (still within the grace)."""
    given_up: list[int] = field(default_factory=list)
    """Creates not found after the grace: failed."""
    reopen: list[tuple[int, SeenOrder]] = field(default_factory=list)
    """Orders we had closed that the exchange shows open on evidence newer than the close."""
    adopt: list[SeenOrder] = field(default_factory=list)


def _newer(hit: SeenOrder, than: float) -> bool:
    """Whether ``hit`` speaks about the exchange after ``than``: ``my_orders`` is current; a
    snapshot only if it was taken after ``than``."""
    return hit.source == "my_orders" or (hit.created is not None and hit.created > than)


def match(orders: Sequence[BotOrder], seen: Sequence[SeenOrder], *,
          closed: Mapping[int, tuple[int, float]], touched: Mapping[int, float], slack: float,
          grace: CreateGrace, evidence: Evidence) -> Matches:
    """Pair our open ``orders`` with the exchange's ``seen`` orders.

    An order is closed only on evidence newer than our last call about it (``touched``: local id
    -> time of that call): ``my_orders`` not listing a spot order (it is current), listing it
    ended, or a GigaSPOT snapshot taken after the call without it. A snapshot older than the call
    says nothing: the order is ``unsure`` and left alone. ``closed`` (exchange id -> (local id,
    last touch) of orders we closed) lets an order we closed come back when ``my_orders`` or a
    snapshot newer than the close shows it open; a stale snapshot cannot revive it.
    """
    out = Matches()
    by_id = {s.order_id: s for s in seen}
    ours = {o.order_id for o in orders if o.order_id is not None}
    for order in orders:
        if order.order_id is None:
            continue
        last = touched.get(order.id, 0.0)
        hit = by_id.get(order.order_id)
        if hit is not None and _newer(hit, last):
            out.present.append((order.id, hit))
        elif order.order_id in evidence.ended:
            out.gone.append(order.id)
        elif order.market != "gigaspot" or evidence.gigaspot_listed:
            out.gone.append(order.id)  # my_orders is current and lists every such order
        elif hit is None and evidence.snapshot_time is not None \
                and evidence.snapshot_time > last:
            out.gone.append(order.id)
        else:
            out.unsure.append(order.id)
    claimed: set[int] = set()
    for order in sorted((o for o in orders if o.order_id is None),
                        key=lambda o: (o.sent_at or 0.0, o.id)):
        since = (order.sent_at if order.sent_at is not None else order.created_at) - slack
        candidates = sorted((s for s in seen if s.server_id == order.server_id
                             and s.order_id not in ours and s.order_id not in claimed
                             and s.order_id not in closed
                             and (s.created is None or s.created >= since)),
                            key=lambda s: (s.source != "my_orders", s.created or 0.0, s.order_id))
        if candidates:
            claimed.add(candidates[0].order_id)
            out.found.append((order.id, candidates[0]))
        elif _grace_over(order, grace, evidence):
            out.given_up.append(order.id)
        else:
            out.not_found.append(order.id)
    for s in seen:
        if s.order_id in ours or s.order_id in claimed:
            continue
        if s.order_id in closed:
            local_id, last = closed[s.order_id]
            if _newer(s, last):
                out.reopen.append((local_id, s))
        else:
            out.adopt.append(s)
    return out


def _grace_over(order: BotOrder, grace: CreateGrace, evidence: Evidence) -> bool:
    """Whether a create unfound now has had its full grace: ``grace.seconds`` since its reply
    (or its send) and, for GigaSPOT, ``grace.snapshots`` recorded snapshots taken after it
    (unless ``my_orders`` is seen to list GigaSPOT orders: then it is current evidence)."""
    sent = max(order.sent_at or order.created_at, order.created_at)
    if evidence.now - sent < grace.seconds:
        return False
    return order.market != "gigaspot" or evidence.gigaspot_listed \
        or evidence.snapshots_after(sent) >= grace.snapshots or evidence.now - sent >= grace.longest


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
                 targets: Sequence[TargetConfig], *, slack: float = 120.0,
                 grace: CreateGrace = CreateGrace(), ended_block: float = 3600.0) -> None:
        self._client = client
        self._sessions = sessions
        self._clock = clock
        self._targets = targets
        self.slack = slack
        self.grace = grace
        self.ended_block = ended_block
        """Seconds a target keeps away from a server whose order the exchange ended (rented on
        demand, offline, expired): bidding there again at once would only wait."""
        self._settled = False
        """Whether a reconciliation of this process has gone through: an order it did not know
        then appears while the bot runs (``APPEARED``)."""
        self.down_since: float | None = None
        """When a bot of this database was last seen watching the exchange before this process
        (``last_watched``; None: never). An order unknown at this process's first reconciliation
        that ``my_orders`` says was created after it was placed while no bot ran, by something
        else (``APPEARED``); one created before it stays adopted as before (the book may have lost
        its row, or it predates this database)."""

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
            giga_ids = set(session.scalars(select(BotOrder.order_id).where(
                BotOrder.market == "gigaspot", BotOrder.order_id.is_not(None),
                BotOrder.dry_run.is_(False))))
            spot_servers = placement.spot.server_id.tolist() if placement.spot is not None else []
            seen = seen_orders(reply, placement.gigaspot, gigaspot_ids=giga_ids,
                               spot_servers=spot_servers)
            orders = open_orders(session, dry_run=False)
            closed_rows = list(session.scalars(select(BotOrder).where(
                BotOrder.order_id.in_([s.order_id for s in seen]),
                BotOrder.state.in_(("closed", "failed")), BotOrder.dry_run.is_(False))
                .order_by(BotOrder.id)))
            touched = last_calls(session, [o.id for o in orders] + [o.id for o in closed_rows])
            closed = {int(o.order_id): (o.id, max(touched.get(o.id, 0.0), o.closed_at or 0.0))
                      for o in closed_rows if o.order_id is not None}
            evidence = Evidence(
                now=now, snapshot_time=placement.gigaspot.time if placement.gigaspot else None,
                ended=frozenset(o.id for o in reply.orders if o.expired),
                gigaspot_listed=any(o.id in giga_ids for o in reply.orders),
                snapshots_after=lambda t: session.scalar(
                    select(func.count()).select_from(GigaspotSnapshot)
                    .where(GigaspotSnapshot.time > t)) or 0)
            m = match(orders, seen, closed=closed, touched=touched, slack=self.slack,
                      grace=self.grace, evidence=evidence)
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
                    keep_away(session, order.server_id, order.target, ENDED_AT_CLORE,
                              now + self.ended_block, now)
            for local_id in m.not_found:
                rows[local_id].lookups += 1
            for local_id in m.given_up:
                _give_up(session, rows[local_id], now, self.slack)
            closed_by_id = {o.id: o for o in closed_rows}
            for local_id, hit in m.reopen:
                _reopen(session, closed_by_id[local_id], hit, now)
            for hit in m.adopt:
                when = "while the bot runs" if self._settled else self._placed_while_down(hit)
                if when is not None and _late_create_of_ours(session, hit.server_id, now):
                    when = None
                _adopt(session, hit, placement, now, appeared=when)
            _assign_unmanaged(session, [o for o in orders if o.target is None and o.adopted],
                              placement, now)
        self._settled = True
        return ReconcileReport(len(m.present), len(m.found), len(m.gone), len(m.given_up),
                               len(m.adopt) + len(m.reopen), len(m.not_found))

    def _placed_while_down(self, hit: SeenOrder) -> str | None:
        """"while no bot ran" when ``my_orders`` dates ``hit`` after ``down_since``, else None
        (a snapshot's bid carries no creation time: it is adopted as before)."""
        if self.down_since is None or hit.source != "my_orders" or hit.created is None \
                or hit.created <= self.down_since:
            return None
        return "while no bot ran"


def last_watched(session: Session) -> float | None:
    """When a bot of this database last watched the exchange: the newest sign of life (stop, else
    heartbeat, else start) of its live and simulated runs (a dry run does not reconcile); None
    before the first. Read before this process records its own run."""
    return session.scalar(select(func.max(func.coalesce(
        BotRun.stopped_at, BotRun.heartbeat_at, BotRun.started_at))).where(
        BotRun.mode != "dry-run"))


ENDED_AT_CLORE = "ended at Clore"
CALL_EVENTS = ("sending", "created", "lowered", "raised", "outcome_unknown", "refused",
               "cooldown_told", "step_learned", "too_low", "lowering_refused", "closed", "failed",
               "reopened")
"""Order events written when we called the exchange about an order (or closed it): a snapshot
taken before the newest of them cannot tell how the order stands."""


def last_calls(session: Session, local_ids: Sequence[int]) -> dict[int, float]:
    """Local id -> when we last called the exchange about the order (or closed it)."""
    if not local_ids:
        return {}
    return {ref: at for ref, at in session.execute(
        select(BotOrderEvent.order_ref, func.max(BotOrderEvent.at))
        .where(BotOrderEvent.order_ref.in_(local_ids), BotOrderEvent.kind.in_(CALL_EVENTS))
        .group_by(BotOrderEvent.order_ref))}


def _reopen(session: Session, order: BotOrder, hit: SeenOrder, now: float) -> None:
    """The exchange shows open an order we had closed: it is ours and open again (the block set
    when it was taken for ended ends now, or the target would cancel it; its record stays, so
    ``--replay-diff`` keeps away from the server exactly as long as the bot did)."""
    log.warning("order %d on server %d, closed here (%s), is open at Clore (%s); re-opened",
                order.order_id, order.server_id, order.close_reason, hit.source)
    order.state = "live"
    order.closed_at = None
    order.close_reason = None
    if hit.price is not None:
        order.price = hit.price
    if hit.spend is not None:
        order.spend = hit.spend
    if order.target is not None:  # ended, not deleted: a replay keeps away exactly as long
        session.execute(ServerBlock.__table__.update().where(
            ServerBlock.server_id == order.server_id, ServerBlock.target == order.target,
            ServerBlock.reason == ENDED_AT_CLORE,
            or_(ServerBlock.until.is_(None), ServerBlock.until > now)).values(until=now))
    add_event(session, order, "reopened", now, order.price, source=hit.source)


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
    log.warning("the %s create on server %d (sent at %.0f) was not found in %.0f s and %d "
                "reconciliations (my_orders: no order of ours with si=%d and ct >= %.0f; "
                "snapshots since: no bid of ours on it); marked failed", order.market,
                order.server_id, order.sent_at or 0.0, now - (order.sent_at or order.created_at),
                order.lookups + 1, order.server_id, since)
    close(session, order, now, CREATE_NOT_FOUND, state="failed")


LATE_CREATE_WINDOW = 6 * 3600.0
"""Seconds after one of our creates was given up (not found within its grace) during which an
unknown order on its server is taken for it, found late, rather than for someone else's."""
CREATE_NOT_FOUND = "create not found at Clore"


def _late_create_of_ours(session: Session, server_id: int, now: float) -> bool:
    """Whether a create of ours on ``server_id`` was given up within ``LATE_CREATE_WINDOW``."""
    return session.scalar(select(BotOrder.id).where(
        BotOrder.server_id == server_id, BotOrder.state == "failed",
        BotOrder.close_reason == CREATE_NOT_FOUND, BotOrder.dry_run.is_(False),
        BotOrder.closed_at >= now - LATE_CREATE_WINDOW).limit(1)) is not None


def _adopt(session: Session, hit: SeenOrder, placement: Placement, now: float, *,
           appeared: str | None = None) -> None:
    """Take an order the database lacks into the book; ``appeared`` (when it came: while the bot
    ran, or while no bot ran): nothing of ours placed it, so no target gets it."""
    market = "gigaspot" if hit.source == "snapshot" else placement.market_of(hit.server_id)
    target = None if appeared else placement.target_of(market, hit.server_id, hit.currency)
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
    if appeared:
        add_event(session, order, APPEARED, now, order.price, order_id=hit.order_id,
                  source=hit.source)
        log.warning("%s order %d on server %d (%s) appeared at the exchange %s, and nothing "
                    "here placed it: something else uses this API key (a person or another "
                    "bot); kept unmanaged (the bot keeps away from its server and counts it "
                    "against the budget; only cancel-all touches it)", market, hit.order_id,
                    hit.server_id, describe_price(order.price, order.currency), appeared)
        return
    log.warning("adopted %s order %d on server %d (%s) that the database did not know: %s",
                market, hit.order_id, hit.server_id, describe_price(order.price, order.currency),
                f"assigned to target {target!r}" if target else
                "no target matches it; kept unmanaged (only cancel-all touches it)")


def _assign_unmanaged(session: Session, orders: Sequence[BotOrder], placement: Placement,
                      now: float) -> None:
    """Give adopted orders without a target one, once their server is in the market data (not
    those that appeared while the bot ran: someone else's)."""
    if not orders:
        return
    foreign = set(session.scalars(select(BotOrderEvent.order_ref).where(
        BotOrderEvent.kind == APPEARED, BotOrderEvent.order_ref.in_([o.id for o in orders]))))
    for order in orders:
        if order.state != "live" or order.id in foreign:
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


"""The order book: our orders as the database keeps them, and as strategies see them (``OwnOrder``).

A row per order (``storage.models.BotOrder``) goes ``creating`` -> ``pending`` -> ``live`` ->
``closed``, or ends ``failed``; ``unknown`` while a call's outcome is unknown. Every change is an
event in the order's history (``bot_order_event``), so a replay can follow each order.

How an order stands in the market (``winning`` / ``outbid``) comes from the latest market frame:
its id among the server's bids, active or not. A live order the frame does not show although the
server was observed after we found the order is ``missing``: it may have ended, so the bot
reconciles with the exchange.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

# the states and strategy_state are defined in the light bidder.book (shared with bidder status)
from bidder.book import IN_FLIGHT_STATES, OPEN_STATES, strategy_state  # noqa: F401
from bidder.config import MarketsConfig
from bidder.rules import StepKnowledge, lowest_allowed, next_lower_at
from storage.models import BIDS, BotOrder, BotOrderEvent, ServerBlock, SpotOffer, SpotPoll

if TYPE_CHECKING:  # bidder status reads orders without numpy (frames and strategies use it)
    from storage.frames import MarketFrame
    from strategies.base import OrderState, OwnOrder

log = logging.getLogger(__name__)

MarketState = Literal["winning", "outbid", "missing"]


def open_orders(session: Session, *, dry_run: bool) -> list[BotOrder]:
    """Our open orders (dry-run orders or real ones), oldest first (``bidder status`` reads them
    with ``bidder.book.read_open_orders``; a test keeps the two equal)."""
    return list(session.scalars(select(BotOrder).where(BotOrder.state.in_(OPEN_STATES),
                                                       BotOrder.dry_run.is_(dry_run))
                                .order_by(BotOrder.id)))


def recently_cancelled(session: Session, target: str, since: float, *,
                       dry_run: bool, before: float | None = None) -> dict[int, float]:
    """Server id -> when we last cancelled an order of ``target`` there, for cancels after
    ``since`` (the strategy's rebuy block) and, with ``before``, before then."""
    query = select(BotOrder.server_id, BotOrder.closed_at).where(
        BotOrder.target == target, BotOrder.dry_run.is_(dry_run), BotOrder.closed_at > since,
        BotOrder.close_reason.like("cancelled%"))
    if before is not None:
        query = query.where(BotOrder.closed_at < before)
    out: dict[int, float] = {}
    for server_id, at in session.execute(query):
        out[int(server_id)] = max(float(at), out.get(int(server_id), float("-inf")))
    return out


RETURN_WINDOW = 86_400.0
"""Seconds a server we had to leave (``cancelled (unusable)``: it went offline, was rented, stopped
matching) is offered to the strategy as one to return to (``TargetView.left_unusable``), the
engine and the backtester alike."""

RETURN_HELD = 3600.0
"""Only a server our order had held this many seconds before it could no longer be held is one to
return to: one lost within minutes of buying it flickers, and coming back to it would be churn."""

UNUSABLE = "cancelled (unusable)"
"""The close reason of an order cancelled because its server could no longer be held."""


def left_unusable(session: Session, target: str, since: float, *,
                  dry_run: bool, before: float | None = None) -> dict[int, float]:
    """Server id -> when we cancelled an order of ``target`` there because the server could no
    longer be held, for the servers whose last cancel after ``since`` (and before ``before``) was
    of that kind: a later cancel for any other reason means we left it by choice since."""
    query = select(BotOrder.server_id, BotOrder.created_at, BotOrder.closed_at,
                   BotOrder.close_reason).where(
        BotOrder.target == target, BotOrder.dry_run.is_(dry_run), BotOrder.closed_at > since,
        BotOrder.close_reason.like("cancelled%"))
    if before is not None:
        query = query.where(BotOrder.closed_at < before)
    last: dict[int, tuple[float, bool]] = {}
    for server_id, created_at, at, reason in session.execute(query):
        note_leave(last, int(server_id), float(at), returnable(reason == UNUSABLE, created_at, at))
    return {sid: at for sid, (at, unusable) in last.items() if unusable}


def returnable(unusable: bool, created_at: float, closed_at: float) -> bool:
    """Whether a cancel leaves a server to return to (``RETURN_HELD``)."""
    return unusable and closed_at - created_at >= RETURN_HELD


def note_leave(last: dict[int, tuple[float, bool]], server_id: int, at: float,
               unusable: bool) -> None:
    """Take a cancel into ``last`` (server id -> (when, whether unusable) of its last cancel), the
    bot's and the backtester's rule alike: the later cancel wins; of two at once (a duplicate's),
    by choice wins."""
    seen = last.get(server_id)
    if seen is None or at > seen[0]:
        last[server_id] = (at, unusable)
    elif at == seen[0]:
        last[server_id] = (at, unusable and seen[1])


IDLE_GRACE = 300.0
"""Seconds a new order of ours may wait on a spot server before its idleness counts (the engine
and the backtester alike)."""

SPEND_AT_STOP = "spend_at_stop"
"""The event a stopping bot writes for each order it leaves open: its spend then (``detail``:
``spend``, None where ``my_orders`` never gave one, and ``run_id``), so the run's bill can be
told from the next run's."""


def add_event(session: Session, order: BotOrder, kind: str, at: float, price: float | None = None,
              **detail: Any) -> None:
    session.add(BotOrderEvent(order_ref=order.id, at=at, kind=kind, price=price,
                              detail=detail or None))


def close(session: Session, order: BotOrder, at: float, reason: str, *,
          state: Literal["closed", "failed"] = "closed") -> None:
    order.state = state
    order.closed_at = at
    order.close_reason = reason
    add_event(session, order, state, at, order.price, reason=reason)


def step_knowledge(order: BotOrder) -> StepKnowledge | None:
    if order.step_price is None or order.step_max is None:
        return None
    return StepKnowledge(order.step_price, order.step_max)


def market_state(frame: MarketFrame, order: BotOrder) -> MarketState | None:
    """``winning`` / ``outbid`` when ``frame`` shows the order; ``missing`` when it shows the
    server, observed after the order was found, without it; ``None`` when it cannot tell."""
    row = frame.row(order.server_id)
    if row is None or order.order_id is None or order.confirmed_at is None:
        return None
    bids = frame.bids_of(row)
    hits = (frame.bid_id[bids] == order.order_id).nonzero()[0]
    if len(hits):
        return "winning" if bool(frame.bid_active[bids][hits[0]]) else "outbid"
    return "missing" if float(frame.observed_at[row]) > order.confirmed_at else None


def own_order(order: BotOrder, markets: MarketsConfig, *, gpus: int | None = None,
              state: OrderState | None = None) -> OwnOrder:
    """``order`` as the strategy sees it, with the rules engine's lowering limits."""
    from strategies.base import OwnOrder

    rules = markets.rules(order.market)  # type: ignore[arg-type]
    return OwnOrder(
        server_id=int(order.server_id),
        price=float(order.price),
        gpus=int(gpus if gpus is not None else order.gpus),
        state=state if state is not None else strategy_state(order),
        created_at=float(order.created_at),
        order_id=int(order.order_id) if order.order_id is not None else None,
        last_lowered_at=order.last_lowered_at,
        next_lower_at=next_lower_at(order.created_at, order.last_lowered_at,
                                    order.told_next_lower_at, rules),
        lowest_allowed=lowest_allowed(order.price, step_knowledge(order),
                                      rules.initial_step_fraction),
    )


def by_target(orders: Iterable[BotOrder]) -> dict[str | None, list[BotOrder]]:
    """Orders grouped by target (``None``: unmanaged)."""
    out: dict[str | None, list[BotOrder]] = {}
    for order in orders:
        out.setdefault(order.target, []).append(order)
    return out


def update_market_states(session: Session, orders: Sequence[BotOrder],
                         frames: Mapping[str, MarketFrame], at: float) -> list[BotOrder]:
    """Refresh each live order's stored market state from ``frames`` (``won`` / ``outbid`` events
    on change); return the orders found ``missing``."""
    missing: list[BotOrder] = []
    for order in orders:
        frame = frames.get(order.market)
        if order.state != "live" or frame is None:
            continue
        seen = market_state(frame, order)
        if seen == "missing":
            missing.append(order)
        elif seen is not None:
            set_market_state(session, order, seen, at)
    return missing


def newly_outbid(session: Session, market: str) -> bool:
    """Whether the newest recorded data of ``market`` shows a live order of ours, winning when
    last looked at, no longer holding its server (so the bot answers now, not at its next cycle)."""
    winning = [o for o in open_orders(session, dry_run=False)
               if o.market == market and o.state == "live" and o.market_state == "winning"]
    if not winning:
        return False
    ids = [o.order_id for o in winning]
    servers = [o.server_id for o in winning]
    if market == "gigaspot":
        b = BIDS.c
        lost = select(b.bid_id).where(b.end_snapshot.is_(None), b.machine_id.in_(servers),
                                      b.bid_id.in_(ids), b.active.is_(False))
    else:
        newest = select(func.max(SpotPoll.id)).where(SpotPoll.server_id.in_(servers)) \
            .group_by(SpotPoll.server_id)
        lost = select(SpotOffer.offer_id).where(SpotOffer.poll_id.in_(newest),
                                                SpotOffer.offer_id.in_(ids),
                                                SpotOffer.active.is_(False))
    return session.scalar(lost.limit(1)) is not None


def set_market_state(session: Session, order: BotOrder, state: Literal["winning", "outbid"],
                     at: float) -> None:
    if order.market_state != state:
        add_event(session, order, "won" if state == "winning" else "outbid", at, order.price)
        if state == "outbid" and order.market_state == "winning":
            log.info("outbid on %d: order %s at %.4g %s/day no longer holds it",
                     order.server_id, order.order_id, order.price, _short(order.currency))
        order.market_state = state
    order.market_seen_at = at


def _short(currency: str) -> str:
    return currency.removesuffix("-Blockchain")


def describe_price(price: float, currency: str) -> str:
    """``12.5 CLORE/day`` for log lines."""
    return f"{price:.6g} {_short(currency)}/day"


def keep_away(session: Session, server_id: int, target: str, reason: str, until: float | None,
              now: float) -> None:
    """Keep ``target`` from bidding on a server until ``until`` (None: for good)."""
    session.add(ServerBlock(server_id=server_id, target=target, reason=reason, at=now,
                            until=until))


def kept_away(session: Session, now: float) -> dict[str, set[int]]:
    """The servers each target keeps away from now."""
    out: dict[str, set[int]] = {}
    for target, server_id in session.execute(
            select(ServerBlock.target, ServerBlock.server_id)
            .where(or_(ServerBlock.until.is_(None), ServerBlock.until > now))):
        out.setdefault(target, set()).add(int(server_id))
    return out

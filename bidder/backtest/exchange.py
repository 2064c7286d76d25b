"""Our orders on an emulated exchange that answers the way the live executor experiences the real one.

The rules engine plans with what it *believes* (``[markets]`` in the config, step knowledge
learned so far); this exchange enforces what is *true* (``ExchangeRules``: for recorded history
the real step rule is unknown, so it is a backtest setting, reported with the results):

- a create becomes a live order at once (the fill model decides whether it wins);
- a raise applies at once;
- a lowering inside the exchange's cooldown is refused (``can_lower_every_600_seconds``; the
  rules engine should never send one, so each is counted), and one below the real step is refused
  with ``max_step``: like the executor, we remember ``StepKnowledge`` and retry at ``max_step``;
- a cancel ends the order; an order that lived past ``creation_fee_after`` pays the creation fee;
  GigaSPOT orders end by themselves after ``gigaspot_max_life``.

Every request counts as one API call (a refused lowering and its retry are two).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bidder.config import MarketRules, MarketsConfig
from bidder.lowering import probed_step
from bidder.orders import RETURN_WINDOW, note_leave, returnable
from bidder.rules import (
    Action,
    Cancel,
    ChangePrice,
    Create,
    Plan,
    StepKnowledge,
    lowest_allowed,
    next_lower_at,
)
from bidder.sim.options import StepRule
from strategies.base import OwnOrder

PRICE_TOLERANCE = 1e-9
"""Relative: a price this close to a limit counts as on it."""
TIME_TOLERANCE = 1e-6
REBUY_WINDOW = 3600.0
"""A create within this long of our own cancel on the same server counts as a rebuy."""


GIGASPOT_REFUSALS = ("silent", "max_step")
CALL_LATENCY = 1.0
"""Seconds: about what a call takes live (its round trip and the rate limiter's spacing); the
exact figure hardly matters while it is above 0 and well under the decision interval."""


@dataclass(frozen=True, slots=True)
class ExchangeRules:
    """What the emulated exchange enforces."""

    step_rule: str = "fraction:0.1"
    """``fraction:F`` or ``absolute:X`` (``bidder.sim.options.StepRule``); default ``[sim] step_rule``."""
    cooldown: float = 600.0
    cooldown_from_creation: bool = True
    payment: str = "pay_your_bid"
    """``pay_your_bid`` or ``second_price``."""
    gigaspot_max_life: float = 20 * 86_400.0
    gigaspot_refusals: str = "silent"
    """How GigaSPOT refuses a lowering: ``silent`` (as its API does: ``failed_to_update_ids``,
    no reason; the bot probes half the step next time, ``bidder.executor``) or ``max_step``
    (as spot does: the step is named and the executor retries at it at once)."""
    call_latency: float = CALL_LATENCY
    """Seconds from a decision to the exchange taking its calls. Live, the bot records an order's
    creation and each lowering when the call returns, a moment after the decision, so the
    cooldown from it ends just after the decision ``cooldown`` later and the next lowering waits
    for the one after (660 s apart on a 60-s decision interval, not 600). 0: calls at the
    decision's time (the model until 2026-12-03). A replay of a bot run takes each call at its
    recorded time."""

    def __post_init__(self) -> None:
        if self.gigaspot_refusals not in GIGASPOT_REFUSALS:
            raise ValueError(f"gigaspot_refusals {self.gigaspot_refusals!r}: expected one of "
                             f"{GIGASPOT_REFUSALS}")

    def step(self) -> StepRule:
        return StepRule.parse(self.step_rule)


@dataclass(frozen=True, slots=True)
class StartingOrder:
    """An order that is live when a run starts (to replay a live session from its real state)."""

    target: str
    server_id: int
    price: float
    created_at: float
    order_id: int | None = None
    last_lowered_at: float | None = None
    knowledge: StepKnowledge | None = None


@dataclass(slots=True)
class EmulatedOrder:
    order_id: int
    target: str
    market: str
    currency: str
    server_id: int
    row: int
    gpus: int
    price: float
    created_at: float
    birth: int
    """Tick of creation: a rival seen at or before it is the earlier bid."""
    lowered_at: float | None
    """The exchange's cooldown clock (creation counts when its rule says so)."""
    bot_lowered_at: float | None = None
    """The last accepted lowering, as the bot records it."""
    not_before: float = 0.0
    """From a ``time_to_lowering`` answer."""
    knowledge: StepKnowledge | None = None
    winning: bool = False
    fee_paid: bool = False
    """A starting order that lived past ``creation_fee_after`` before the run: its creation fee
    is not the run's."""


@dataclass(slots=True)
class Counters:
    api_calls: int = 0
    creates: int = 0
    raises: int = 0
    lowerings: int = 0
    cancels: int = 0
    expired: int = 0
    step_refusals: int = 0
    cooldown_refusals: int = 0
    """Lowerings refused for the cooldown: the rules engine should never send one."""
    creation_fees: float = 0.0
    """In the order currency."""
    creation_fee_orders: int = 0
    rebuys_within_hour: int = 0
    """Creates on a server this target cancelled an order of its own on within the hour before."""


@dataclass(slots=True)
class _Target:
    market: str
    currency: str
    counters: Counters = field(default_factory=Counters)


class EmulatedExchange:
    """Our live orders, keyed by order id, and what every request cost."""

    def __init__(self, rules: ExchangeRules, markets: MarketsConfig,
                 targets: Iterable[tuple[str, str, str]],
                 server_info: Callable[[str, int, str], tuple[int, int, float]]) -> None:
        """``targets``: (name, market, order currency). ``server_info(market, server_id,
        currency)`` gives (row, GPUs, floor in ``currency``) of a candidate server now (row -1:
        not a candidate)."""
        self.rules = rules
        self.markets = markets
        self._step = rules.step()
        self._targets = {name: _Target(market, currency) for name, market, currency in targets}
        self._info = server_info
        self.orders: dict[int, EmulatedOrder] = {}
        self._ids = itertools.count(1)
        self.version = 0
        """Changes whenever an order is created, repriced, ended, wins or loses its server."""
        self._own: dict[str, tuple[int, list[OwnOrder]]] = {}
        self._own_of: dict[int, tuple[tuple[object, ...], OwnOrder]] = {}
        self._oldest: tuple[int, float] = (-1, math.inf)
        self.left_at: dict[str, dict[int, float]] = {name: {} for name in self._targets}
        """Per target: server id -> when we last cancelled an order there (kept ``left_keep``)."""
        self.left_keep = REBUY_WINDOW
        self.leaves: dict[str, dict[int, tuple[float, bool]]] = {
            name: {} for name in self._targets}
        """Per target: server id -> (when, whether its server could no longer be held) of our last
        cancel there, within ``RETURN_WINDOW`` (``bidder.orders.note_leave``)."""

    def counters(self, target: str) -> Counters:
        return self._targets[target].counters

    # --- the bot's side ----------------------------------------------------------------------------

    def own_orders(self, target: str) -> list[OwnOrder]:
        """The target's live orders as the bot's database would describe them."""
        cached = self._own.get(target)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        rules = self.markets.rules(self._targets[target].market)
        orders = [self._own_order(o, rules) for o in self.orders.values() if o.target == target]
        self._own[target] = (self.version, orders)
        return orders

    def _own_order(self, o: EmulatedOrder, rules: MarketRules) -> OwnOrder:
        """``o`` as the bot sees it, with the lowering limits built as live
        (``bidder.orders.own_order``: the bot's beliefs, not the exchange's truth), so a strategy
        gets the same inputs in a backtest; made again only when that changed (most of the
        orders stay the same when one of them changes)."""
        state = (o.price, o.winning, o.bot_lowered_at, o.not_before, o.knowledge)
        made = self._own_of.get(o.order_id)
        if made is not None and made[0] == state:
            return made[1]
        own = OwnOrder(o.server_id, o.price, o.gpus, "winning" if o.winning else "outbid",
                       o.created_at, order_id=o.order_id, last_lowered_at=o.bot_lowered_at,
                       next_lower_at=next_lower_at(o.created_at, o.bot_lowered_at,
                                                   o.not_before or None, rules),
                       lowest_allowed=lowest_allowed(o.price, o.knowledge,
                                                     rules.initial_step_fraction))
        self._own_of[o.order_id] = (state, own)
        return own

    def set_winning(self, order: EmulatedOrder, winning: bool) -> None:
        """What the fill model says about the order now (the bot sees it as winning/outbid)."""
        if order.winning != winning:
            order.winning = winning
            self.version += 1

    def add_starting(self, order: StartingOrder, birth: int, start: float) -> EmulatedOrder:
        """Put a starting order on the book when the run starts (at ``start``); it is older than
        the rivals first seen after tick ``birth``."""
        spec = self._targets[order.target]
        row, gpus, _ = self._info(spec.market, order.server_id, spec.currency)
        if row < 0:
            raise ValueError(f"starting order on server {order.server_id}: not in the recorded "
                             f"{spec.market} market")
        order_id = order.order_id if order.order_id is not None else next(self._ids)
        if order_id in self.orders:
            raise ValueError(f"starting order id {order_id} given twice")
        lowered = order.last_lowered_at
        if self.rules.cooldown_from_creation:
            lowered = max(order.created_at, lowered or -math.inf)
        placed = EmulatedOrder(order_id, order.target, spec.market, spec.currency, order.server_id,
                               row, gpus, order.price, order.created_at, birth, lowered,
                               order.last_lowered_at, knowledge=order.knowledge,
                               fee_paid=self._fee_due(spec.market, order.created_at, start))
        self.orders[order_id] = placed
        self.version += 1
        return placed

    def apply(self, plan: Plan, now: float, tick: int,
              done_at: Callable[[Action], float | None] | None = None, *,
              hold_back: bool = False,
              lost: Callable[[Action], bool] | None = None) -> None:
        """Send the plan's actions, decided at ``now``, in order, as the executor would: each
        taken ``call_latency`` later, or when ``done_at`` says (a replayed run's recorded
        times). ``lost`` names the calls that never reached the exchange (a replayed run's,
        whose outcome was unknown and found not done). With ``hold_back`` (a daily budget), a
        cancel or lowering not done as planned (lost, refused, or lowered only part of the way)
        keeps the plan's raises and creates back, as the executor keeps them for its next cycle:
        the budget counted on what it would free."""
        released = True
        for action in plan.actions:
            if lost is not None and lost(action):
                if isinstance(action, Cancel) or (isinstance(action, ChangePrice)
                                                  and not action.is_raise):
                    released = False
                continue
            at = done_at(action) if done_at is not None else None
            if at is None:
                at = now + self.rules.call_latency
            if isinstance(action, Create):
                if hold_back and not released:
                    continue
                self._create(action, at, tick)
            elif isinstance(action, ChangePrice):
                order = self.orders[action.order_id]
                if action.price > order.price:
                    if hold_back and not released:
                        continue
                    self._call(order.target).raises += 1
                    order.price = action.price
                    self.version += 1
                else:
                    released &= self._lower(order, action.price, at)
            elif isinstance(action, Cancel):
                self._call(action.target).cancels += 1
                order = self.orders[action.order_id]
                left = self.left_at[order.target]
                if len(left) > 64:  # forget what no block or count looks at any more
                    for sid in [k for k, t in left.items() if at - t > self.left_keep]:
                        del left[sid]
                left[order.server_id] = at
                self._note_leave(order.target, order.server_id, at,
                                 returnable(action.reason == "unusable", order.created_at, at))
                self.end(order, at)

    def left_unusable(self, target: str, now: float) -> dict[int, float]:
        """Server id -> when we left it because it could no longer be held, for the servers whose
        last cancel within ``RETURN_WINDOW`` was of that kind (``bidder.orders.left_unusable``)."""
        since = now - RETURN_WINDOW
        return {sid: at for sid, (at, unusable) in self.leaves[target].items()
                if unusable and at > since}

    def _note_leave(self, target: str, server_id: int, at: float, unusable: bool) -> None:
        leaves = self.leaves[target]
        if len(leaves) > 64:  # forget what no view looks at any more
            for sid in [k for k, (t, _) in leaves.items() if at - t > RETURN_WINDOW]:
                del leaves[sid]
        note_leave(leaves, server_id, at, unusable)

    def expire(self, now: float) -> None:
        """End GigaSPOT orders that reached their maximum life."""
        if now - self._oldest_gigaspot() < self.rules.gigaspot_max_life:
            return  # the oldest has not: none has
        for order in [o for o in self.orders.values() if o.market == "gigaspot"
                      and now - o.created_at >= self.rules.gigaspot_max_life]:
            self.counters(order.target).expired += 1
            self.end(order, now)

    def _oldest_gigaspot(self) -> float:
        """When the oldest live GigaSPOT order was created (inf: none), remembered until the
        orders change: ``expire`` runs at every step."""
        if self._oldest[0] != self.version:
            self._oldest = (self.version, min((o.created_at for o in self.orders.values()
                                               if o.market == "gigaspot"), default=math.inf))
        return self._oldest[1]

    def end(self, order: EmulatedOrder, now: float) -> None:
        """End an order; it pays the creation fee if it lived past ``creation_fee_after`` (unless
        it had paid it before the run)."""
        rules = self.markets.rules(order.market)
        if not order.fee_paid and self._fee_due(order.market, order.created_at, now):
            counters = self.counters(order.target)
            counters.creation_fees += rules.creation_fee
            counters.creation_fee_orders += 1
        del self.orders[order.order_id]
        self._own_of.pop(order.order_id, None)
        self.version += 1

    def _probe(self, order: EmulatedOrder, wanted: float, now: float) -> None:
        """A GigaSPOT lowering refused without a reason, as the bot takes it
        (``bidder.executor.Executor._probe_step``): half the step next time, or a full cooldown
        of its belief when that step is too small to be the reason."""
        lowest = probed_step(order.price, wanted)
        if lowest is None:
            order.not_before = now + self.markets.rules(order.market).cooldown
        else:
            order.knowledge = StepKnowledge(order.price, lowest)

    def _fee_due(self, market: str, created_at: float, now: float) -> bool:
        """Whether an order created at ``created_at`` owes its creation fee by ``now``."""
        return now - created_at > self.markets.rules(market).creation_fee_after

    def end_all(self, now: float) -> None:
        """The run is over: fees of the orders still live are due as if they ended now."""
        for order in list(self.orders.values()):
            self.end(order, now)

    # --- internals -------------------------------------------------------------------------------

    def _call(self, target: str) -> Counters:
        counters = self.counters(target)
        counters.api_calls += 1
        return counters

    def _create(self, action: Create, now: float, tick: int) -> None:
        spec = self._targets[action.target]
        row, gpus, _ = self._info(spec.market, action.server_id, spec.currency)
        counters = self._call(action.target)
        counters.creates += 1
        left = self.left_at[action.target].get(action.server_id)
        if left is not None and now - left < REBUY_WINDOW:
            counters.rebuys_within_hour += 1
        order_id = next(self._ids)
        while order_id in self.orders:
            order_id = next(self._ids)
        self.orders[order_id] = EmulatedOrder(
            order_id, action.target, spec.market, spec.currency, action.server_id, row, gpus,
            action.price, now, tick, now if self.rules.cooldown_from_creation else None)
        self.version += 1

    def _lower(self, order: EmulatedOrder, price: float, now: float) -> bool:
        """Lower ``order`` to ``price`` as the exchange allows; True if it went as planned."""
        counters = self._call(order.target)
        planned = True
        silent = order.market == "gigaspot" and self.rules.gigaspot_refusals == "silent"
        if order.lowered_at is not None:
            wait = order.lowered_at + self.rules.cooldown - now
            if wait > TIME_TOLERANCE:
                counters.cooldown_refusals += 1
                if silent:
                    self._probe(order, price, now)
                else:
                    order.not_before = now + math.ceil(wait)
                self.version += 1  # the bot learns when it may lower: its view changes
                return False
        _, _, floor = self._info(order.market, order.server_id, order.currency)
        lowest = max(self._step.lowest(order.price), floor if math.isfinite(floor) else 0.0)
        if price < lowest * (1 - PRICE_TOLERANCE):
            counters.step_refusals += 1
            if silent:
                self._probe(order, price, now)
                self.version += 1
                return False
            order.knowledge = StepKnowledge(order.price, lowest)
            if lowest >= order.price * (1 - PRICE_TOLERANCE):
                self.version += 1  # the step learned changes the bot's view
                return False
            counters.api_calls += 1  # the retry at max_step
            price, planned = lowest, False
        counters.lowerings += 1
        order.price = price
        order.lowered_at = order.bot_lowered_at = now
        self.version += 1
        return planned

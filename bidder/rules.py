"""The rules engine: turns what strategies want into actions the exchange allows.

The only place that knows the exchange's constraints; live, dry-run and backtest all pass through
``plan``, so none of them can break a rule or cheat:

- raise at once; lower only when the cooldown has passed (600 s after the order's last lowering,
  creation counting when configured) and only down to the lowest price allowed (learned from
  ``exceeded_max_step``, conservative until learned);
- never below the floor / ``min_bid``, never above the target's cap;
- never past the daily budget: every live order counts at its bid as if winning, plus fees;
  cancels and lowerings free room first, then raises take it (trimmed to fit), then creates
  (deferred when they do not fit); an unknown USD rate refuses every increase;
- never two live orders of ours on one server, across all targets; orders whose id or outcome is
  not known yet (``pending``, ``unknown``) are never touched.

What cannot happen now is returned as ``Deferred`` with a reason, so ``bidder status`` can say
"will lower to X at T". Everything here is pure: dataclasses in, dataclasses out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bidder.config import BudgetConfig, Config, MarketRules, MarketsConfig
from bidder.lowering import next_lower_at  # shared with bidder status (no pydantic there)
from bidder.spend import cost_per_day

if TYPE_CHECKING:  # types only: bidder status uses the lowering maths without numpy
    from strategies.base import Candidates, DesiredBid, OwnOrder, TargetView

DeferReason = Literal["cooldown", "step", "cap", "floor_above_cap", "budget", "rate_unknown",
                      "in_flight", "server_taken", "not_eligible", "watching"]
"""Why a wish waits: ``cooldown`` (a lowering waits for ``not_before``), ``step`` (a lowering goes
as far as allowed now and continues later), ``cap`` (the wish is above the cap), ``floor_above_cap``
(the server's floor is above the cap), ``budget`` (the daily budget has no room), ``rate_unknown``
(a USD rate needed for the cap or budget is unknown), ``in_flight`` (the order's id or last outcome
is not known yet), ``server_taken`` (another of our orders lives on the server), ``not_eligible``
(the server does not match the target or cannot be rented now), ``watching`` (a spot target creates
nothing before its first full watch-list round: ``TargetView.watching``)."""

CancelReason = Literal["not_wanted", "unusable", "duplicate"]
"""``unusable``: the strategy left a server it could no longer hold (offline, rented, no longer
matching, kept away from); ``not_wanted``: it left one it could hold (dearer than another,
above the cap)."""

_IN_FLIGHT = ("pending", "unknown")
_EPS = 1e-9
"""Relative tolerance under which two prices are the same: a rounding-sized lowering would burn
the order's cooldown for nothing."""


# --- actions and their explanations -------------------------------------------------------------



class Unmanaged(Protocol):
    """An order of ours no target manages (``BotOrder`` live; ``UnmanagedOrder`` in backtests)."""

    @property
    def market(self) -> str: ...
    @property
    def price(self) -> float: ...
    @property
    def currency(self) -> str: ...


class Rates(Protocol):
    def usd_rate(self, currency: str) -> float: ...


def budget_left(config: Config, unmanaged: Sequence[Unmanaged],
                frames: Mapping[str, Rates]) -> BudgetConfig:
    """The budget the targets share: the configured one less what unmanaged orders of ours cost
    (no strategy holds them, but they are paid for). NaN when a rate it needs is unknown, which
    the rules engine answers by adding nothing. The engine and the backtester both plan with it."""
    budget = config.budget
    if budget.max_per_day is None or not unmanaged:
        return budget
    rates = frames.get("spot") or frames.get("gigaspot")

    def usd(currency: str) -> float:
        if currency == "USD":
            return 1.0
        return rates.usd_rate(currency) if rates is not None else math.nan

    cost = sum(cost_per_day(o.price,
                            config.markets.rules(o.market).fee_fraction,  # type: ignore[arg-type]
                            o.currency, budget.currency, usd) for o in unmanaged)
    return budget.model_copy(update={"max_per_day": budget.max_per_day - cost})

@dataclass(frozen=True, slots=True)
class Create:
    target: str
    server_id: int
    price: float


@dataclass(frozen=True, slots=True)
class ChangePrice:
    """Raise or lower a live order's price."""

    target: str
    order_id: int
    server_id: int
    old_price: float
    price: float

    @property
    def is_raise(self) -> bool:
        return self.price > self.old_price


@dataclass(frozen=True, slots=True)
class Cancel:
    target: str
    order_id: int
    server_id: int
    reason: CancelReason


Action = Create | ChangePrice | Cancel


def action_json(action: Action) -> dict[str, Any]:
    """An action as the bot records it (``bot_decision.actions``) and a replay compares it."""
    if isinstance(action, Create):
        kind = "create"
    elif isinstance(action, Cancel):
        kind = "cancel"
    else:
        kind = "raise" if action.is_raise else "lower"
    return {"kind": kind, **asdict(action)}


@dataclass(frozen=True, slots=True)
class Deferred:
    """A wish that cannot be carried out (fully) now, and why."""

    target: str
    server_id: int
    wanted_price: float | None
    """The price wanted; None when the wish is a cancel."""
    reason: DeferReason
    not_before: float | None = None
    """When the wish may go through, when that is known (cooldown, next step)."""


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    """In the order to send them: cancels, lowerings, raises, creates."""
    deferred: tuple[Deferred, ...]


@dataclass(frozen=True, slots=True)
class TargetDecision:
    view: TargetView
    desired: Sequence[DesiredBid] | None
    """The strategy's wish (validated by ``safe_decide``); None: no change for this target."""


# --- step and cooldown knowledge ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepKnowledge:
    """What an ``exceeded_max_step`` reply taught about one order."""

    price: float
    """The order's price when the lowering was refused."""
    max_step: float
    """The reply's ``max_step``: the lowest price allowed at that moment."""


def lowest_allowed(current_price: float, knowledge: StepKnowledge | None,
                   initial_step_fraction: float) -> float:
    """The lowest price one lowering of an order at ``current_price`` may reach.

    Whether the exchange's step is an absolute amount or a percentage is unknown, so a learned step
    is applied both ways and the higher (safer) result wins. Without knowledge, at most
    ``initial_step_fraction`` of the price (1.0: go straight for the wanted price and learn the step
    from the refusal).
    """
    if knowledge is None:
        return current_price * (1.0 - initial_step_fraction)
    step = max(knowledge.price - knowledge.max_step, 0.0)
    as_amount = current_price - step
    as_fraction = (current_price * (1.0 - step / knowledge.price) if knowledge.price > 0
                   else current_price)
    return min(max(as_amount, as_fraction), current_price)


# --- budget -------------------------------------------------------------------------------------


def _conversions(views: Iterable[TargetView], currency: str) -> dict[str, float]:
    """Per target: how many ``currency`` units one unit of its order currency is (NaN: unknown)."""
    views = list(views)
    usd_per_budget_unit = 1.0 if currency == "USD" else next(
        (v.usd_per_unit for v in views if v.target.currency == currency), math.nan)
    return {v.target.name: 1.0 if v.target.currency == currency
            else v.usd_per_unit / usd_per_budget_unit for v in views}


def _order_cost(price: float, fee_fraction: float, per_unit: float) -> float:
    """What an order at ``price`` costs per day with fees, in the budget currency."""
    return price * (1.0 + fee_fraction) * per_unit


def committed_per_day(views: Sequence[TargetView], markets: MarketsConfig, currency: str) -> float:
    """What our live orders cost per day if all of them won, fees included, in ``currency`` (USD
    or an order currency). NaN when a rate needed for the conversion is unknown."""
    per_unit = _conversions(views, currency)
    return sum((_order_cost(o.price, markets.rules(v.target.market).fee_fraction,
                            per_unit[v.target.name]) for v in views for o in v.orders), 0.0)


class _Budget:
    """Room left in the daily budget while a plan is assembled."""

    def __init__(self, decisions: Sequence[TargetDecision], markets: MarketsConfig,
                 budget: BudgetConfig) -> None:
        self.limited = budget.max_per_day is not None
        self.room = math.inf
        if not self.limited:  # nothing to weigh: every method below is then a no-op
            return
        views = [d.view for d in decisions]
        self.per_unit = _conversions(views, budget.currency)
        self.fees = {v.target.name: markets.rules(v.target.market).fee_fraction for v in views}
        self.room = budget.max_per_day - committed_per_day(views, markets, budget.currency)

    def _cost(self, target: str, price: float) -> float:
        return _order_cost(price, self.fees[target], self.per_unit[target])

    def release(self, target: str, price: float) -> None:
        if self.limited:
            self.room += self._cost(target, price)

    def affordable(self, target: str) -> float:
        """The most this target may add to its orders' prices now (order currency); NaN when the
        rate is unknown."""
        if not self.limited:
            return math.inf
        return self.room / self._cost(target, 1.0)

    def spend(self, target: str, price: float) -> None:
        if self.limited:
            self.room -= self._cost(target, price)


# --- planning -----------------------------------------------------------------------------------


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= _EPS * max(1.0, abs(a), abs(b))


def _clamp(price: float, floor: float, cap: float) -> float | None:
    """``price`` within [floor, cap] (an unknown floor does not bind); None when floor > cap."""
    if math.isfinite(floor) and floor > cap and not _same(floor, cap):
        return None
    price = min(price, cap)
    return max(price, floor) if math.isfinite(floor) else price


@dataclass(slots=True)
class _Draft:
    """Actions of one plan by kind; raises and creates wait for the budget pass."""

    budget: _Budget
    cancels: list[Cancel] = field(default_factory=list)
    lowers: list[ChangePrice] = field(default_factory=list)
    raises: list[ChangePrice] = field(default_factory=list)
    creates: list[Create] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)

    def cancel(self, action: Cancel, price: float) -> None:
        self.cancels.append(action)
        self.budget.release(action.target, price)

    def lower(self, action: ChangePrice) -> None:
        self.lowers.append(action)
        self.budget.release(action.target, action.old_price - action.price)

    def defer(self, target: str, server_id: int, wanted: float | None, reason: DeferReason,
              not_before: float | None = None) -> None:
        self.deferred.append(Deferred(target, server_id, wanted, reason, not_before))


def plan(decisions: Sequence[TargetDecision], rules: MarketsConfig, budget: BudgetConfig,
         now: float) -> Plan:
    """The actions that carry out ``decisions`` within the exchange's rules and the budget.

    Pass a decision for every target that has live orders (``desired=None`` when its strategy had
    nothing to say): the budget and the one-order-per-server rule must see all of them.
    """
    draft = _Draft(_Budget(decisions, rules, budget))
    occupied = {o.server_id: d.view.target.name for d in decisions for o in d.view.orders}
    for d in decisions:
        if d.desired is not None:
            desired = {b.server_id: b.price for b in d.desired}
            if d.view.watching:
                desired = _no_new_servers(d.view, desired, draft)
            _plan_target(d.view, desired, rules.rules(d.view.target.market), now, occupied,
                         draft)
    _fit_budget(draft)
    return Plan(actions=(*draft.cancels, *draft.lowers, *draft.raises, *draft.creates),
                deferred=tuple(draft.deferred))


def _no_new_servers(view: TargetView, desired: dict[int, float],
                    draft: _Draft) -> dict[int, float]:
    """``desired`` without new servers (deferred as ``watching``), for a target still in its
    first watch-list round: a held server keeps the price wanted for it, or its own price when
    the strategy wanted to leave it for a new one (which cannot be bought yet)."""
    held = {o.server_id: o.price for o in view.orders}
    new = [sid for sid in desired if sid not in held]
    if not new:
        return desired
    for sid in new:
        draft.defer(view.target.name, sid, desired[sid], "watching")
    return {sid: desired.get(sid, price) for sid, price in held.items()}


def _why_left(c: Candidates, server_id: int) -> CancelReason:
    """Why the strategy left a server it held: ``unusable`` when the view made it not eligible
    (a strategy may come back to such a server without its switch margin: ``left_unusable``)."""
    row = c.row(server_id)
    return "unusable" if row is None or not c.eligible[row] else "not_wanted"


def _plan_target(view: TargetView, desired: dict[int, float], rules: MarketRules, now: float,
                 occupied: dict[int, str], draft: _Draft) -> None:
    name = view.target.name
    if not math.isfinite(view.target.cap_per_gpu_day):
        # the cap's USD rate is unknown, so every server looks ineligible: hold still
        for sid, wanted in desired.items():
            draft.defer(name, sid, wanted, "rate_unknown")
        return
    c = view.candidates
    seen: set[int] = set()
    for order in view.orders:
        sid = order.server_id
        wanted = None if sid in seen else desired.get(sid)
        if order.state in _IN_FLIGHT or order.order_id is None:
            if wanted is None or not _same(wanted, order.price):
                draft.defer(name, sid, wanted, "in_flight")
        elif wanted is None:
            draft.cancel(Cancel(name, order.order_id, sid,
                                "duplicate" if sid in seen else _why_left(c, sid)), order.price)
        else:
            row = c.row(sid)
            if row is None:
                raise ValueError(f"target {name!r}: the view has no row for our server {sid}")
            _reprice(name, order, order.order_id, wanted, float(c.floor[row]), float(c.cap[row]),
                     rules, now, draft)
        seen.add(sid)

    for sid, wanted in desired.items():
        if sid in seen:
            continue
        if occupied.get(sid, name) != name:
            draft.defer(name, sid, wanted, "server_taken")
            continue
        row = c.row(sid)
        if row is None or not c.eligible[row]:
            draft.defer(name, sid, wanted, "not_eligible")
            continue
        price = _clamp(wanted, float(c.floor[row]), float(c.cap[row]))
        if price is None:
            draft.defer(name, sid, wanted, "floor_above_cap")
            continue
        occupied[sid] = name
        draft.creates.append(Create(name, sid, price))


def _reprice(name: str, order: OwnOrder, order_id: int, wanted: float, floor: float, cap: float,
             rules: MarketRules, now: float, draft: _Draft) -> None:
    """Move one live order towards ``wanted`` as far as the rules allow now."""
    sid, current = order.server_id, order.price
    price = _clamp(wanted, floor, cap)
    if price is None:
        draft.defer(name, sid, wanted, "floor_above_cap")
        return
    if price < wanted and not _same(price, wanted):
        draft.defer(name, sid, wanted, "cap")
    if _same(price, current):
        return
    if price > current:
        draft.raises.append(ChangePrice(name, order_id, sid, current, price))
        return
    ready_at = max(order.next_lower_at,
                   next_lower_at(order.created_at, order.last_lowered_at, None, rules))
    if now < ready_at:
        draft.defer(name, sid, price, "cooldown", ready_at)
        return
    lowest = (order.lowest_allowed if order.lowest_allowed is not None
              else lowest_allowed(current, None, rules.initial_step_fraction))
    step_to = max(price, lowest)
    if step_to >= current or _same(step_to, current):
        draft.defer(name, sid, price, "step")
        return
    draft.lower(ChangePrice(name, order_id, sid, current, step_to))
    if not _same(step_to, price):
        draft.defer(name, sid, price, "step", now + rules.cooldown)


def _fit_budget(draft: _Draft) -> None:
    """Trim raises and defer creates to the room the cancels and lowerings left (in that order)."""
    budget = draft.budget
    if not budget.limited:
        return  # every raise and create fits as planned
    raises: list[ChangePrice] = []
    for r in draft.raises:
        room = budget.affordable(r.target)
        if math.isnan(room):
            draft.defer(r.target, r.server_id, r.price, "rate_unknown")
            continue
        price = min(r.price, r.old_price + max(room, 0.0))
        if not _same(price, r.price):
            draft.defer(r.target, r.server_id, r.price, "budget")
        if price <= r.old_price or _same(price, r.old_price):
            continue
        budget.spend(r.target, price - r.old_price)
        raises.append(ChangePrice(r.target, r.order_id, r.server_id, r.old_price, price))
    draft.raises = raises

    creates: list[Create] = []
    for c in draft.creates:
        room = budget.affordable(c.target)
        if math.isnan(room):
            draft.defer(c.target, c.server_id, c.price, "rate_unknown")
        elif c.price > room and not _same(c.price, room):
            draft.defer(c.target, c.server_id, c.price, "budget")
        else:
            budget.spend(c.target, c.price)
            creates.append(c)
    draft.creates = creates

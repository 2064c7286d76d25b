"""The strategy interface: market view + our orders + time in, desired bids out. No I/O.

A strategy is a small pure object. The live bot, the dry run and the backtester all build the same
``TargetView`` and pass it to ``decide``; what comes back is a *wish* ("hold these servers at these
prices"), which the rules engine clamps to what the exchange allows and the executor carries out.
So a strategy can never break an exchange rule, and a backtest cannot cheat.

Prices in a view are **per server per day in the target's order currency** (GigaSPOT: CLORE).
``gpus`` converts to per-GPU-day. ``cap`` is already per server-day in the order currency.

Interface version 1. The optional hook ``on_start`` does nothing by default; it and ``decide``
take ``**kwargs`` so new arguments can be added without breaking user strategies.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

STRATEGY_API_VERSION = 1
DAY = 86_400.0

OrderState = Literal["winning", "outbid", "pending", "unknown"]
"""``winning``: our bid holds the server. ``outbid``: a rival holds it. ``pending``: sent, not yet
seen on the market (or its id is not known yet). ``unknown``: the last call's outcome is unknown and
the order awaits reconciliation; the rules engine will not touch it."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What the user asked to hold, as the strategy needs it."""

    name: str
    market: str
    """``"spot"`` or ``"gigaspot"``."""
    unit: Literal["gpus", "servers"]
    count: int
    """How many GPUs (or servers) to hold."""
    currency: str
    cap_per_gpu_day: float
    """In the order currency (a USD cap is converted with the API's current rate)."""
    pl: float | None = None
    """Our GigaSPOT power limit per GPU (watts); ``None`` on spot."""
    fee_fraction: float = 0.0
    """The market's fees on top of the price (``MarketRules.fee_fraction``), for strategies that
    weigh a bid against revenue."""
    creation_fee: float = 0.0
    """What each new order costs once (``MarketRules.creation_fee``, order currency): the price of
    a move, weighed against what the move saves."""
    rebuy_block: float = 0.0
    """Seconds after our own cancel on a server during which it is not bought again unless
    nothing else can meet the count (``[bot] rebuy_block``)."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """The servers this target may hold, in aligned columns (numpy arrays of length n).

    Servers we hold are always included, even when they no longer match the target; ``eligible``
    is False for those, so the strategy knows to move away.
    """

    server_id: np.ndarray
    """int64"""
    gpus: np.ndarray
    """int32: GPUs in the server"""
    floor: np.ndarray
    """float64: the lowest price the exchange accepts (spot floor / GigaSPOT ``min_bid``)"""
    threshold: np.ndarray
    """float64: the price our bid must *exceed* to win now against the best rival, under the
    market's allocation rule and our power limit; 0 when no rival bids. NaN when unknown."""
    rival_price: np.ndarray
    """float64: the best rival's own price; NaN when no rival bids"""
    cap: np.ndarray
    """float64: the target's cap for this server (``cap_per_gpu_day x gpus``)"""
    reliability: np.ndarray
    """float64 in 0..1; NaN when unknown"""
    eligible: np.ndarray
    """bool: matches the target and can be rented now"""
    observed_at: np.ndarray
    """float64: when this server's data was observed"""
    raises_per_hour: np.ndarray | None = None
    """float64: how often the best rival's price went up lately (``bidder.memory``); None when
    the caller keeps no market memory"""
    hands_per_hour: np.ndarray | None = None
    """float64: how often the best bid changed hands otherwise lately (a rival arriving, leaving,
    or a cheaper bid taking over)"""
    falls_per_hour: np.ndarray | None = None
    """float64: of those, how often the best rival's price went down lately (a ratchet's steps
    down; a rival only coming and going has none)"""
    rival_high: np.ndarray | None = None
    """float64: the best rival's highest price over the last six hours (``bidder.memory``; NaN: no
    rival in that time): what staying above a saw-tooth rival costs"""
    falls_seen: np.ndarray | None = None
    """float64: the falls behind ``falls_per_hour``, decayed alike: how much evidence the rate is
    (one fall on a server watched for a minute is a rate of 60 an hour)"""
    _index: tuple[np.ndarray, np.ndarray | None] | None = field(
        default=None, init=False, repr=False, compare=False)
    """The ids sorted, and the sorting order unless they already were; built on first look-up."""
    _found: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Rows looked up so far (-1: not a candidate)."""

    def __len__(self) -> int:
        return len(self.server_id)

    def row(self, server_id: int) -> int | None:
        """Row of ``server_id`` (the first, were it listed twice), or None."""
        row = self._found.get(server_id)
        if row is None:
            keys, order = self._sorted()
            i = int(keys.searchsorted(server_id))
            found = i < len(keys) and keys[i] == server_id
            row = self._found[server_id] = (i if order is None else int(order[i])) if found else -1
        return row if row >= 0 else None

    def rows_of(self, server_ids: Sequence[int]) -> np.ndarray:
        """Rows of the given (integer) server ids, -1 where not a candidate: many at once."""
        keys, order = self._sorted()
        ids = np.asarray(server_ids, dtype=np.int64)
        if not len(keys):
            return np.full(len(ids), -1, dtype=np.int64)
        i = np.minimum(keys.searchsorted(ids), len(keys) - 1)
        rows = np.where(keys[i] == ids, i if order is None else order[i], -1)
        self._found.update(zip(ids.tolist(), rows.tolist()))
        return rows

    def _sorted(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Look-ups go through the sorted ids, and each id's row is remembered: the strategies,
        the registry and the rules engine look up every order and every desired bid of a view,
        most of them more than once."""
        if self._index is None:
            ids = self.server_id
            if not np.count_nonzero(ids[1:] <= ids[:-1]):
                index: tuple[np.ndarray, np.ndarray | None] = (ids, None)
            else:
                order = ids.argsort(kind="stable")
                index = (ids[order], order)
            object.__setattr__(self, "_index", index)
        return self._index


@dataclass(frozen=True, slots=True)
class OwnOrder:
    """One of our live orders, as the bot's database knows it."""

    server_id: int
    price: float
    """Per server-day, order currency."""
    gpus: int
    state: OrderState
    created_at: float
    order_id: int | None = None
    """None until the exchange's order id is known (a create answers no id)."""
    last_lowered_at: float | None = None
    next_lower_at: float = 0.0
    """Earliest time the rules engine will allow a lowering."""
    lowest_allowed: float | None = None
    """The lowest price one lowering may reach now: by the learned step (``max_step``), else by
    ``[markets] initial_step_fraction``. The bot and the backtester always give it (as
    ``bidder.rules.lowest_allowed``); None only from a caller that does not know the rules."""


@dataclass(frozen=True, slots=True)
class TargetView:
    """Everything a strategy may look at for one target at one moment."""

    now: float
    target: TargetSpec
    candidates: Candidates
    orders: tuple[OwnOrder, ...]
    """Our live orders for this target."""
    usd_per_unit: float
    """USD per unit of the order currency (NaN when unknown)."""
    recent_wins: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Winning prices per GPU-day (order currency) seen on matching servers during the strategy's
    ``history_window`` (only filled when the strategy asks for history)."""
    left_at: Mapping[int, float] = field(default_factory=dict)
    """Server id -> when we last cancelled an order of this target there, for the servers left
    within ``target.rebuy_block``: buying one again soon after is churn."""
    left_unusable: Mapping[int, float] = field(default_factory=dict)
    """Server id -> when we cancelled this target's order there because the server could no
    longer be held (it went offline, was rented, stopped matching), for the servers left so in the
    last ``bidder.orders.RETURN_WINDOW`` and not left by choice since: once usable again, a
    strategy may come back to one without the margin it asks of a move (``hold_cheapest``'s
    ``return_discount``); the server it moved to was only a stand-in."""
    watching: bool = False
    """True while a spot target has not seen one full watch-list round in this run
    (``bidder.watchlist.watch_round_complete``): the rules engine then creates no order for it
    and keeps what it holds, live and in backtests alike."""


@dataclass(frozen=True, slots=True)
class DesiredBid:
    """Hold ``server_id`` at ``price`` (per server-day, order currency)."""

    server_id: int
    price: float


class Params(BaseModel):
    """Base of a strategy's parameters: wrong names or types are refused with a clear message."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(ABC):
    """Base class of every strategy.

    ``decide`` returns the complete set of holdings wanted for the target: listed servers are held
    at the given prices (same price = keep, new price = raise or lower), our orders on servers not
    listed are cancelled. Returning ``None`` means "no change this tick".
    """

    api_version: ClassVar[int] = STRATEGY_API_VERSION
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    history_window: ClassVar[float] = 0.0
    """Seconds of recent winning prices the strategy wants in ``TargetView.recent_wins``."""
    uses_memory: bool = False
    """True when ``decide`` looks at how contested servers are (``Candidates.raises_per_hour``,
    ``hands_per_hour``, ``falls_per_hour``, ``falls_seen``, ``rival_high``): the caller then
    keeps a market memory for the target."""

    def __init__(self, **params: Any) -> None:
        self.params = type(self).Params(**params)

    @abstractmethod
    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid] | None:
        """Desired holdings for ``view.target``, or None for no change."""

    # --- optional hook: does nothing by default ------------------------------------------------

    def on_start(self, target: TargetSpec, **kwargs: Any) -> None:
        """Called once before the first ``decide`` of a run (live or backtest)."""


def gpus_needed(spec: TargetSpec, gpus: np.ndarray) -> np.ndarray:
    """How much each server counts towards ``spec.count``: its GPUs, or 1 per server."""
    return gpus.astype(np.int64) if spec.unit == "gpus" else np.ones(len(gpus), dtype=np.int64)


def cheapest_cover(need: int, size: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Rows whose ``size`` adds up to at least ``need`` at the lowest total ``cost``: exact.

    Rows with a non-finite cost are never chosen; costs are not negative (they are prices).
    Among covers of equal cost the one with the fewest units wins (no GPUs nobody asked for),
    then the one met first in the order of cost per unit (bigger rows first on ties). When the
    rows cannot reach ``need`` it returns every usable row (the most they can give).

    The order of cost per unit gives a cover at once when some prefix of it adds up to ``need``
    exactly: that prefix is the fractional (linear) optimum, so no set of whole rows does better.
    Otherwise a knapsack over the unit counts decides, on few rows: a cheapest cover holds at
    most ``ceil(need / s)`` rows of size ``s`` (one fewer would still cover), the cheapest of
    their size, and no row dearer than a cover already known.
    """
    need = int(need)
    rows = _by_cost_per_unit(size, cost)
    if need <= 0:
        return rows[:0]
    s = size[rows].astype(np.int64, copy=False)
    keep = s > 0
    if not keep.all():
        rows, s = rows[keep], s[keep]
    reach = np.cumsum(s)
    if not len(reach) or reach[-1] <= need:
        return rows  # everything, when it is not more than the need
    k = int(reach.searchsorted(need))  # the first prefix that covers
    if reach[k] == need:
        return rows[:k + 1]
    return rows[_knapsack(need, s, cost[rows], float(cost[rows[:k + 1]].sum()))]


def _knapsack(need: int, s: np.ndarray, c: np.ndarray, bound: float) -> np.ndarray:
    """Positions (into ``s``/``c``, in cost-per-unit order) of the cheapest cover of ``need``
    units; ``bound`` is the cost of a cover already known. Fewest units on equal cost, then
    fewest rows of each size. A dynamic programme over exact unit counts, one size at a time
    (the sizes are few: 1, 2, 4, 8 GPUs...), each a handful of vector operations."""
    usable = np.flatnonzero(c <= bound)  # no row dearer than a known cover is in a cheaper one
    sizes = s[usable]
    groups = []  # per size: its cheapest rows (within a size, cost per unit orders by cost)
    for size in np.flatnonzero(np.bincount(sizes)).tolist():
        groups.append((size, usable[sizes == size][:-(-need // size)]))
    top = need + groups[-1][0] - 1  # a cheapest cover never overshoots by a whole row
    dp = np.full(top + 1, np.inf)
    dp[0] = 0.0
    picks = []
    for size, members in groups:
        prefix = np.zeros(len(members) + 1)
        np.cumsum(c[members], out=prefix[1:])
        source, valid = _shifts(size, len(members), top)
        options = np.where(valid, dp[source], np.inf) + prefix[:, None]
        k = options.argmin(axis=0)  # the fewest rows of this size on equal cost
        dp = options[k, np.arange(top + 1)]
        picks.append(k)
    j = need + int(dp[need:].argmin())  # the cheapest, and of those the fewest units
    chosen = []
    for (size, members), k in zip(reversed(groups), reversed(picks)):
        taken = int(k[j])
        chosen.extend(members[:taken].tolist())
        j -= taken * size
    return np.array(sorted(chosen), dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _shifts(size: int, rows: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """For taking 0..``rows`` rows of ``size`` units to reach 0..``top`` units: where each total
    comes from (clipped) and whether it can."""
    source = np.arange(top + 1)[None, :] - size * np.arange(rows + 1)[:, None]
    return np.maximum(source, 0), source >= 0


def _by_cost_per_unit(size: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The rows of finite cost in the order of ``cheapest_cover``: by cost per unit, then bigger
    rows, then earlier rows. A plain sort of all rows (the others last) gives that order when no
    two rows cost the same per unit (the usual case), and costs half a two-key sort."""
    finite = np.isfinite(cost)
    per_unit = np.where(finite, cost / np.maximum(size, 1), np.inf)
    rows = per_unit.argsort()[:np.count_nonzero(finite)]
    ranked = per_unit[rows]
    if np.count_nonzero(ranked[1:] == ranked[:-1]):
        usable = finite.nonzero()[0]
        return usable[np.lexsort((-size[usable], per_unit[usable]))]
    return rows


def hold_cheapest(view: TargetView, bid: np.ndarray, cost: np.ndarray, *,
                  held_discount: float = 0.0, return_discount: float = 0.0,
                  payback: float | np.ndarray = 0.0) -> list[DesiredBid]:
    """Desired bids at ``bid`` on the rows that fill the target's count at the lowest ``cost``.

    The common last step of the built-in strategies. ``cost`` ranks the rows (per server-day;
    NaN or inf: do not hold). What leaving a held server costs keeps a strategy from churning:

    - rows we already hold count ``held_discount`` cheaper (0..1), since moving restarts an order's
      cooldown and step knowledge (1.0 keeps every usable holding);
    - rows we had to leave lately (``view.left_unusable``) count ``return_discount`` cheaper: a
      server held until it went offline competes with its stand-in on equal terms once back,
      where a new one must beat the stand-in by ``held_discount``;
    - with ``payback`` (seconds, one for all rows or one per row) every row we do not hold also
      carries the target's creation fee spread over that horizon: a move happens only when it
      pays its new order back in time, and of two covers of equal price the one with fewer
      orders wins;
    - a row we left within ``target.rebuy_block`` (``view.left_at``) is not bought again, unless
      the count cannot be met without it;
    - a held row whose price to win is unknown this tick (NaN ``threshold``: a rival's price in a
      currency without a rate, say) stays at its order's price while the order is not known to
      be outbid: not knowing is no reason to pay a creation fee and a new cooldown elsewhere.
      Outbid there, there is no price to raise to, so it is left. Rows we do not hold are not
      bought blind.

    Our orders count as held from the moment they are sent (``pending`` included).
    """
    c = view.candidates
    spec = view.target
    held = np.zeros(0, dtype=np.int64)
    if view.orders:
        rows = c.rows_of([o.server_id for o in view.orders])
        held = rows[rows >= 0]
        bid, cost = _keep_unknown(view, rows, bid, cost)
    if len(held) and held_discount:
        usable = held[np.isfinite(cost[held])]
        cost = cost.copy()
        cost[usable] *= 1.0 - held_discount
    if view.left_unusable and return_discount:
        back = _not_held(c.rows_of(list(view.left_unusable)), held, len(c))
        if len(back):
            cost = cost.copy()
            cost[back] *= 1.0 - return_discount
    scalar = not isinstance(payback, np.ndarray)
    if spec.creation_fee > 0 and (payback > 0 if scalar else bool((payback > 0).any())):
        if scalar:  # the common case: one horizon, no array work
            fee = np.full(len(c), spec.creation_fee * DAY / float(payback))
        else:
            with np.errstate(divide="ignore"):
                fee = np.where(payback > 0, spec.creation_fee * DAY / payback, 0.0)
        fee[held] = 0.0
        cost = cost + fee
    size = gpus_needed(spec, c.gpus)
    blocked = _blocked(view, held) if view.left_at and spec.rebuy_block > 0 else None
    if blocked is not None and len(blocked):
        allowed = cost.copy()
        allowed[blocked] = np.inf
        rows = cheapest_cover(spec.count, size, allowed)
        if int(size[rows].sum()) < spec.count:  # not enough without them: they may come back
            rows = cheapest_cover(spec.count, size, cost)
    else:
        rows = cheapest_cover(spec.count, size, cost)
    return [DesiredBid(sid, price) for sid, price in zip(c.server_id[rows].tolist(),
                                                         bid[rows].tolist())]


def _keep_unknown(view: TargetView, rows: np.ndarray, bid: np.ndarray, cost: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``bid`` and ``cost`` with each held, eligible row of unknown threshold whose order is not
    outbid at its order's price (at most the cap)."""
    c = view.candidates
    keep = [(row, min(o.price, float(c.cap[row]))) for o, row in zip(view.orders, rows.tolist())
            if row >= 0 and o.state != "outbid" and c.eligible[row]
            and np.isnan(c.threshold[row])]
    if not keep:
        return bid, cost
    bid, cost = np.array(bid, dtype=np.float64), np.array(cost, dtype=np.float64)
    for row, price in keep:
        bid[row] = cost[row] = price
    return bid, cost


def _blocked(view: TargetView, held: np.ndarray) -> np.ndarray:
    """Rows of servers we cancelled within ``rebuy_block`` and do not hold now."""
    since = view.now - view.target.rebuy_block
    ids = [sid for sid, at in view.left_at.items() if at > since]
    if not ids:
        return np.zeros(0, dtype=np.int64)
    return _not_held(view.candidates.rows_of(ids), held, len(view.candidates))


def _not_held(rows: np.ndarray, held: np.ndarray, n: int) -> np.ndarray:
    """``rows`` (-1: not a candidate) that are candidates and not in ``held``."""
    rows = rows[rows >= 0]
    if not len(held) or not len(rows):
        return rows
    ours = np.zeros(n, dtype=bool)  # a mask: np.isin sorts, at every decision
    ours[held] = True
    return rows[~ours[rows]]

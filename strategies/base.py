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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

STRATEGY_API_VERSION = 1

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
    """The lowest price a lowering may reach now, when learned (``max_step``); None when unknown."""


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
    """Rows whose ``size`` adds up to at least ``need`` at (nearly) the lowest total ``cost``.

    Rows with a non-finite cost are never chosen. Greedy by cost per unit (bigger rows first on
    ties, so fewer servers), never overshooting the need with a row while smaller rows can fill
    it; at every step it also weighs finishing with the single cheapest row that covers what is
    left, so one big cheap server beats several small dear ones, and the count is exceeded only
    when that is cheaper. When the rows cannot reach ``need`` it returns what they can give.
    Sizes are counts (not negative).
    """
    rows = _by_cost_per_unit(size, cost)
    s, c = size[rows].astype(np.int64, copy=False), cost[rows]
    s_list = s.tolist()
    largest = int(s.max(initial=0))
    chosen: list[int] = []
    spent, left = 0.0, int(need)
    best_cost, best = np.inf, None
    while left > 0:
        if left <= largest:  # some row may cover what is left on its own: the first cheapest
            cover_cost = np.where(s >= left, c, np.inf)
            cover_cost[chosen] = np.inf
            i = int(cover_cost.argmin())
            if cover_cost[i] < np.inf and spent + c[i] < best_cost:
                best_cost, best = spent + c[i], [*chosen, i]
        run, units = _greedy_run(s_list, set(chosen), left)
        if not run:
            break
        chosen.extend(run)
        spent += float(c[run].sum())
        left -= units
    if left <= 0 and spent < best_cost:
        best = chosen
    return rows[best if best is not None else chosen]


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


def _greedy_run(sizes: list[int], taken: set[int], left: int) -> tuple[list[int], int]:
    """The rows the greedy takes next, in order: each one not taken yet that fits in ``left``,
    until one would overshoot what is left; and their total size. A walk over the first few
    rows instead of vector passes over all of them."""
    run: list[int] = []
    total = 0
    for j, size in enumerate(sizes):
        if size <= left and j not in taken:
            if total + size > left:
                break
            run.append(j)
            total += size
    return run, total


def hold_cheapest(view: TargetView, bid: np.ndarray, cost: np.ndarray, *,
                  held_discount: float = 0.0) -> list[DesiredBid]:
    """Desired bids at ``bid`` on the rows that fill the target's count at the lowest ``cost``.

    The common last step of the built-in strategies. ``cost`` ranks the rows (per server-day;
    NaN or inf: do not hold). Rows we already hold count ``held_discount`` cheaper (0..1): the
    hysteresis that keeps a strategy from churning between servers of nearly the same price, since
    moving restarts an order's cooldown and step knowledge. 1.0 keeps every usable holding.
    """
    c = view.candidates
    if view.orders and held_discount:
        held = c.rows_of([o.server_id for o in view.orders])
        held = held[held >= 0]
        held = held[np.isfinite(cost[held])]
        cost = cost.copy()
        cost[held] *= 1.0 - held_discount
    rows = cheapest_cover(view.target.count, gpus_needed(view.target, c.gpus), cost)
    return [DesiredBid(sid, price) for sid, price in zip(c.server_id[rows].tolist(),
                                                         bid[rows].tolist())]

"""The oracle: a lower bound on what holding capacity could have cost, knowing the future.

Why this bound and no tighter one. Under the fill model, an order that holds a server during a
step pays at least that server's *marginal* price then, ``max(floor, threshold)``: below the floor
it cannot run, and at or below the best rival's score it does not win (second-price payment pays
exactly the marginal price). That holds whatever the order's history. The exchange's lowering
rules (step, 600 s) bind how fast *one order* can come down, but a strategy may cancel and
re-create instead, which escapes them; and an order cancelled within ``creation_fee_after``
(10 minutes) pays no creation fee, so rotating orders avoids both the ratchet and the fee (at the
price of many calls). No cost beyond the marginal price is therefore unavoidable, and the bound is
pointwise: per step, the cheapest way to hold ``g`` units is the fractional cover of ``g`` by the
servers that can be held, in order of marginal price per unit (the linear relaxation of the
covering problem, itself below every integral choice of servers).

A server *can be held* by a target at a step when, at some time in the range, it matched the
target's hardware, place and power limit and passed its health filters (an order placed then may
stay on it after it no longer does), can be won then (online, rentable, a floor in the order currency), and its
marginal price is within the most the target could have bid on it (its cap per GPU-day at the best
rate seen, times the most GPUs it had; or a starting order's price). Fees scale with what is paid,
so the bound pays them on the marginal price; creation fees add nothing to it.

Two numbers come out per run and target: ``like_for_like``, the bound for holding exactly as many
units as the strategy held at each step (so regret = cost - bound >= 0 always, and a strategy
that holds less is not flattered), and ``full``, the bound for holding the whole target.
Reactive rivals only ever raise above the recorded book, so the recorded bound holds for both
modes.

The fractional bound may hold part of a server; nobody can. Beside it, the *whole-server oracle*
holds, step by step, the cheapest set of whole servers that reaches the count (at the same marginal
prices): ``whole`` for the whole target (where the fractional one covers it; where the market
cannot, both hold everything there is), with the GPU-hours it held (``whole_gpu_hours``: a cheapest
cover may overshoot the count when that is cheaper), and ``whole_like_for_like`` per held series.
A strategy's held servers are one such set, so fractional <= whole <= strategy, step by step; the
gap between the fractional and the whole-server oracle is regret nobody could avoid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bidder.backtest.data import FLOOR, OURS, CHUNK_CELLS, History, facts_frame
from bidder.backtest.events import carry_after
from bidder.backtest.fills import Book, marginal_price
from bidder.config import Config, TargetConfig
from bidder.view import static_match
from storage.frames import usd_per_unit

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class OracleResult:
    like_for_like: list[float]
    """Per ``held`` series: the cheapest cost of holding that many units at each step"""
    full: float
    """The cheapest cost of holding the whole target (as much of it as could be held)"""
    full_availability: float
    """Time-weighted share of the target the oracle could hold"""
    full_per_unit: np.ndarray
    """Per step: the oracle's price per unit-day when holding the whole target (NaN when nothing
    could be held), for plots"""
    whole: float = float("nan")
    """The cheapest cost of holding the whole target with whole servers"""
    whole_gpu_hours: float = float("nan")
    """The GPU-hours the whole-server oracle held"""
    whole_like_for_like: tuple[float, ...] = ()
    """Per ``held`` series: the cheapest cost of holding that many units with whole servers"""


def _versions(history: History, target: TargetConfig, names: tuple[str, ...]
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every recorded value of the named server columns (from whichever stream holds each):
    (rows, columns), initial values first, for "did this server ever ..." questions."""
    data = history.markets[target.market]
    rows: dict[str, np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    for stream in (data.facts, data.state):
        for name in names:
            if name in stream.initial:
                rows[name] = np.concatenate([np.arange(data.n_servers), stream.row])
                columns[name] = np.concatenate([stream.initial[name], stream.values[name]])
    return rows, columns


def _ever(n: int, rows: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[rows[ok]] = True
    return out


def _can_hold(history: History, target: TargetConfig) -> np.ndarray:
    """Per candidate row: whether an order of the target could ever have been placed on it: some
    version of its facts matched the target (hardware, place, our power limit) and some version of
    its health passed (working properly, reliability)."""
    data = history.markets[target.market]
    n = data.n_servers
    rows, c = _versions(history, target, ("gpus", "gpu_model", "country", "pl_min", "pl_max",
                                          "working_properly", "reliability"))
    r = rows["gpus"]
    match = static_match(facts_frame(target.market, data.server_id[r], c["gpus"], c["gpu_model"],
                                     c["country"]), target)
    if target.oc is not None:
        match &= (c["pl_min"] <= target.oc.pl) & (target.oc.pl <= c["pl_max"])
    healthy = np.ones(len(rows["reliability"]), dtype=bool)
    if target.min_reliability > 0:
        healthy &= c["reliability"] >= target.min_reliability
    if target.working_properly_only and "working_properly" in c:
        working = _ever(n, rows["working_properly"], c["working_properly"])
    else:
        working = np.ones(n, dtype=bool)
    return _ever(n, r, match) & _ever(n, rows["reliability"], healthy) & working


def _cap_bound(history: History, target: TargetConfig, floors_currency: str,
               starting: Mapping[int, float]) -> np.ndarray:
    """Per candidate row: the most the target could have bid on it."""
    data = history.markets[target.market]
    gpus = np.concatenate([data.facts.initial["gpus"], data.facts.values["gpus"]])
    rows = np.concatenate([np.arange(data.n_servers), data.facts.row])
    most_gpus = np.zeros(data.n_servers)
    np.maximum.at(most_gpus, rows, gpus.astype(np.float64))
    if target.cap_currency in (None, target.currency):
        per_gpu = target.max_price_per_gpu_day
    else:
        # as the view converts the cap (``MarketFrame.usd_rate``): spot's recorded rates with
        # its fallbacks (USD is 1, CLORE is ``clore_price``); GigaSPOT's ``clore_price``
        rates = np.array([history.clore_usd[t] if target.market == "gigaspot" else
                          usd_per_unit(floors_currency, history.rates_at(t), history.clore_usd[t])
                          for t in range(history.n_ticks)])
        rates = rates[np.isfinite(rates) & (rates > 0)]
        per_gpu = target.max_price_per_gpu_day / rates.min() if len(rates) else np.nan
    bound = np.nan_to_num(per_gpu * most_gpus, nan=-np.inf)
    for row, price in zip(data.rows_of(starting), starting.values()):
        if row >= 0:
            bound[row] = max(bound[row], price)
    return bound


def oracle(history: History, config: Config, target: TargetConfig, *, step_tick: np.ndarray,
           step_dt: np.ndarray, held: Sequence[np.ndarray],
           starting: Mapping[int, float] | None = None) -> OracleResult:
    """The bounds for ``target`` over the steps (``step_tick``, ``step_dt``), for each series of
    units ``held`` per step. ``starting``: server id -> price of starting orders."""
    most = max([target.count, *(int(series.max(initial=0)) for series in held)])
    return bounds(covers(history, config, target, step_tick=step_tick, step_dt=step_dt,
                         most=most, starting=starting), held)


@dataclass(frozen=True, slots=True)
class _Block:
    """The cheapest servers of the steps ``first:last``, cheapest first (a cover's inputs)."""

    first: int
    last: int
    unit_cost: np.ndarray
    c_units: np.ndarray
    c_cost: np.ndarray
    available: np.ndarray
    dt: np.ndarray
    """Step durations in days, times the fee factor"""
    whole: np.ndarray
    """Per step and unit count j: the cheapest cost per day of at least j units of whole
    servers (inf: not reachable)"""


@dataclass(frozen=True, slots=True)
class Covers:
    """A target's cheapest covers step by step, for holdings of up to ``most`` units: all the
    oracle needs of the market. Apart from the holdings, so a backtest computes them once, while
    its runs go on, and then bounds every run with them (``bounds``)."""

    most: int
    blocks: tuple[_Block, ...]
    full: float
    full_availability: float
    full_per_unit: np.ndarray
    whole: float = float("nan")
    whole_gpu_hours: float = float("nan")


def covers(history: History, config: Config, target: TargetConfig, *, step_tick: np.ndarray,
           step_dt: np.ndarray, most: int,
           starting: Mapping[int, float] | None = None) -> Covers:
    """The cheapest covers of up to ``most`` units of ``target`` at each step, and the bound for
    holding the whole target. ``starting``: server id -> price of starting orders."""
    data = history.markets[target.market]
    rule = config.markets.gigaspot.allocation if target.market == "gigaspot" else "highest_price"
    fee = 1.0 + config.markets.rules(target.market).fee_fraction
    pl = float(target.oc.pl) if target.oc is not None else np.nan
    can_hold = _can_hold(history, target)
    bound = _cap_bound(history, target, target.currency, starting or {})
    n = data.n_servers
    blocks = []
    full = 0.0
    covered = 0.0
    per_unit = np.full(len(step_tick), np.nan)
    whole = whole_gpu_seconds = 0.0
    block = max(1, CHUNK_CELLS // max(n, 1))
    streams = (data.facts, data.state, data.rivals)
    wanted = [[c for c in names if c in stream.initial] for stream, names in zip(streams, (
        ("gpus", "rented"),
        ("online", "rentable", "energy_price", f"{FLOOR}{target.currency}", OURS),
        ("price", "pl", "birth")))]
    carries = [{c: s.initial[c] for c in names} for s, names in zip(streams, wanted)]
    for lo in range(0, history.n_ticks, block):
        hi = min(history.n_ticks, lo + block)
        facts, state, rivals = (s.dense(lo, hi, c, names) for s, c, names in
                                zip(streams, carries, wanted))
        carries = [carry_after(x) for x in (facts, state, rivals)]
        first, last = np.searchsorted(step_tick, [lo, hi], side="left")
        if first == last:
            continue
        rows = step_tick[first:last] - lo
        rented = facts.get("rented", np.zeros_like(state["rentable"]))
        if OURS in state:  # a spot server our own offer holds is ours, whatever the listing says
            rented = rented & ~state[OURS]
        book = Book(floor=state.get(f"{FLOOR}{target.currency}", np.full((hi - lo, n), np.nan)),
                    can_win=state["online"] & state["rentable"] & ~rented, gpus=facts["gpus"],
                    energy_price=state.get("energy_price", np.full((hi - lo, n), np.nan)),
                    rival_price=rivals["price"], rival_pl=rivals["pl"], rival_birth=rivals["birth"])
        clore = history.clore_usd[lo:hi, None]
        m = marginal_price(rule, book, pl, clore)[rows]  # type: ignore[arg-type]
        units = (facts["gpus"] if target.unit == "gpus" else np.ones_like(facts["gpus"]))[rows]
        ok = can_hold & np.isfinite(m) & (m <= bound) & (units > 0)
        unit_cost = np.where(ok, m / np.maximum(units, 1), np.inf)
        weight = np.where(ok, units, 0)
        order = _cheapest_first(unit_cost, most + 1)[:, :most + 1]
        u = np.take_along_axis(unit_cost, order, axis=1)
        w = np.take_along_axis(weight, order, axis=1).astype(np.float64)
        c_units = np.cumsum(w, axis=1)
        with np.errstate(invalid="ignore"):
            c_cost = np.cumsum(np.where(w > 0, u * w, 0.0), axis=1)
        available = weight.sum(axis=1).astype(np.float64)
        b = _Block(int(first), int(last), u, c_units, c_cost, available,
                   step_dt[first:last] * fee / DAY, _whole_covers(m, weight, most))
        blocks.append(b)
        goal = np.full(last - first, float(target.count))
        cost = _cover(goal, b)
        full += float(np.sum(cost * b.dt))
        w_cost, w_units = _whole_cover(target.count, b, cost)
        whole += float(np.sum(w_cost * b.dt))
        if target.unit == "gpus":
            w_gpus = w_units
        else:  # the cheapest servers, as many as the count: their GPUs
            taken = np.minimum(target.count, w_units)[:, None] > np.arange(order.shape[1])
            w_gpus = (np.take_along_axis(facts["gpus"][rows], order, axis=1) * taken).sum(axis=1)
        whole_gpu_seconds += float(np.sum(w_gpus * step_dt[first:last]))
        reachable = np.minimum(goal, available)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_unit[first:last] = np.where(reachable > 0, cost / reachable, np.nan)
        covered += float(np.sum(reachable / goal * step_dt[first:last]))
    total = float(step_dt.sum())
    return Covers(most, tuple(blocks), full, covered / total if total > 0 else float("nan"),
                  per_unit, whole, whole_gpu_seconds / 3600.0)


def bounds(covers: Covers, held: Sequence[np.ndarray]) -> OracleResult:
    """The oracle's bounds for each series of units ``held`` per step (at most ``covers.most``
    units: ``ValueError`` otherwise)."""
    most = max((int(series.max(initial=0)) for series in held), default=0)
    if most > covers.most:
        raise ValueError(f"a holding of {most} units exceeds the covers, made for up to "
                         f"{covers.most}")
    like = [0.0] * len(held)
    whole_like = [0.0] * len(held)
    for b in covers.blocks:
        for k, series in enumerate(held):
            goal = series[b.first:b.last]
            fractional = _cover(goal, b)
            like[k] += float(np.sum(fractional * b.dt))
            whole_like[k] += float(np.sum(_whole_cover(goal, b, fractional)[0] * b.dt))
    return OracleResult(like, covers.full, covers.full_availability, covers.full_per_unit,
                        covers.whole, covers.whole_gpu_hours, tuple(whole_like))


def _cheapest_first(unit_cost: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the ``k`` cheapest entries in the order of a stable sort
    (ties to the lower column). A cover of at most ``k - 1`` units never looks further, since every
    server that can be held gives at least one unit, so only those are sorted."""
    n = unit_cost.shape[1]
    if k >= n // 2:
        return np.argsort(unit_cost, axis=1, kind="stable")
    kth = np.partition(unit_cost, k - 1, axis=1)[:, k - 1:k]
    below = unit_cost < kth
    at = unit_cost == kth
    # of the entries tied with the k-th, the lowest columns, as many as are missing
    take = below | (at & (np.cumsum(at, axis=1) <= k - below.sum(axis=1, keepdims=True)))
    columns = np.nonzero(take)[1].reshape(len(unit_cost), k)
    ranked = np.argsort(np.take_along_axis(unit_cost, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, ranked, axis=1)


def _cover(goal: np.ndarray, block: _Block) -> np.ndarray:
    """Per step of ``block``, the cheapest fractional cover of ``goal`` units (at most the
    available ones)."""
    unit_cost, c_units, c_cost = block.unit_cost, block.c_units, block.c_cost
    goal = np.minimum(np.asarray(goal, dtype=np.float64), block.available)
    full = (c_units <= goal[:, None]).sum(axis=1)  # servers taken whole
    idx = np.arange(len(goal))
    prev_units = np.where(full > 0, c_units[idx, np.maximum(full - 1, 0)], 0.0)
    prev_cost = np.where(full > 0, c_cost[idx, np.maximum(full - 1, 0)], 0.0)
    nxt = np.minimum(full, unit_cost.shape[1] - 1)
    rest = goal - prev_units
    with np.errstate(invalid="ignore"):
        extra = np.where(rest > 0, rest * unit_cost[idx, nxt], 0.0)
    return prev_cost + extra


def _whole_covers(m: np.ndarray, units: np.ndarray, most: int) -> np.ndarray:
    """Per step (rows of ``m``, the marginal price per server-day; ``units`` 0 where a server
    cannot be held), the cheapest cost of at least j whole units for j = 0..``most`` + the
    largest size - 1. A knapsack over exact unit counts, one server size at a time and every step
    at once: a cheapest cover holds at most ceil(j / s) servers of size s, the cheapest of them."""
    steps = len(m)
    sizes = [z for z in np.flatnonzero(np.bincount(units.ravel(), minlength=1)).tolist() if z]
    top = most + (max(sizes) - 1 if sizes else 0)
    dp = np.full((steps, top + 1), np.inf)
    dp[:, 0] = 0.0
    for z in sizes:
        k = min(-(-most // z), m.shape[1])
        source = np.arange(top + 1)[None, :] - z * np.arange(k + 1)[:, None]
        valid, source = source >= 0, np.maximum(source, 0)
        rows = max(1, CHUNK_CELLS // ((k + 1) * (top + 1)))
        for lo in range(0, steps, rows):  # bounded memory however large the count
            part = slice(lo, lo + rows)
            price = np.where(units[part] == z, m[part], np.inf)
            if k < price.shape[1]:
                price = np.partition(price, k - 1, axis=1)[:, :k]
            prefix = np.zeros((len(price), k + 1))
            prefix[:, 1:] = np.cumsum(np.sort(price, axis=1), axis=1)
            options = np.where(valid, dp[part][:, source], np.inf) + prefix[:, :, None]
            dp[part] = options.min(axis=1)
    # at least j units: the cheapest of exactly j, j + 1, ... (a suffix minimum)
    return np.minimum.accumulate(dp[:, ::-1], axis=1)[:, ::-1]


def _whole_cover(goal: np.ndarray | int, block: _Block,
                 fractional: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step of ``block``: the cheapest cost of at least ``goal`` units of whole servers, and
    the units that cover holds. Where the servers cannot reach ``goal``, both oracles hold every
    server there is (``fractional``: the fractional cover's cost then)."""
    w = block.whole
    idx = np.arange(len(w))
    need = np.minimum(np.broadcast_to(np.asarray(goal, dtype=np.int64), idx.shape), w.shape[1] - 1)
    cost = w[idx, need]
    # the units held: the largest j whose cheapest "at least j" is still that cost
    reach = (w <= cost[:, None]).sum(axis=1) - 1
    short = ~np.isfinite(cost)
    cost = np.where(short, fractional, cost)
    return cost, np.where(short, block.available, reach).astype(np.float64)

"""What a run achieved, per target: cost, availability, gaps, churn, overpay, regret.

Definitions (all time-weighted by step durations; units are the target's: GPUs or servers):

- ``cost``: price paid while holding + the market's fee fraction on it + creation fees, in the
  order currency; ``cost_per_gpu_hour`` divides it by the GPU-hours held.
- ``availability``: mean of ``min(held, wanted) / wanted``.
- ``time_to_acquire_min``: from the first step until the whole target is first held (null: never).
- ``gaps`` / ``gap_min``: after that, the spells with less than the target held, and their length.
- ``preemptions_per_gpu_day``: our orders losing their server to a rival, per GPU-day held.
- ``overpay_mean`` / ``overpay_p95``: price paid above the marginal (lowest winning) price, per
  GPU-day, over the GPU-time held.
- ``regret``: cost minus the oracle's cost of holding as many units as were held, step by step
  (never negative, see ``bidder.backtest.oracle``); ``oracle_full_cost`` is the oracle's cost of
  holding the whole target, ``oracle_availability`` how much of it could be held at all.
- ``oracle_whole_servers_cost`` / ``oracle_whole_servers_gpu_hours``: the whole-server oracle's
  cost of holding the whole target and the GPU-hours it held (the cheapest hindsight cover with
  whole servers wherever the fractional oracle covers the target);
  ``oracle_whole_like_for_like_cost`` the same for as many units as were held, step by step
  (fractional like-for-like <= it <= ``cost``).
- ``surplus_gpu_hours``: GPU-hours held beyond the target count (GPUs nobody asked for).
- ``orders_created``, ``rebuys_within_hour`` (creates on a server within an hour of our own
  cancel there), ``creation_fees``: churn, and what it cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bidder.backtest.oracle import OracleResult
from bidder.backtest.runner import RunRecord, TargetRun


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` where each counts ``weights``; NaN when empty."""
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    if not len(values):
        return float("nan")
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1], side="left")])


def _spells(short: np.ndarray, dt: np.ndarray) -> tuple[int, float]:
    """Number of runs of True in ``short`` and their total duration (seconds)."""
    starts = short & ~np.concatenate([[False], short[:-1]])
    return int(starts.sum()), float(dt[short].sum())


def target_metrics(run: RunRecord, target: TargetRun, oracle: OracleResult,
                   like_for_like: float, *, whole_like: float | None = None) -> dict[str, Any]:
    dt = run.step_dt
    total_time = float(dt.sum())
    c = target.counters
    cost = target.price_cost + target.fee_cost + c.creation_fees
    gpu_hours = float((target.held_gpus * dt).sum()) / 3600.0
    have = np.minimum(target.held_units, target.count) / target.count
    complete = target.held_units >= target.count
    first = int(np.argmax(complete)) if complete.any() else None
    gaps, gap_seconds = _spells(~complete[first:], dt[first:]) if first is not None else (0, 0.0)
    overpay = np.concatenate(target.overpay) if target.overpay else np.empty(0)
    weight = np.concatenate(target.overpay_weight) if target.overpay_weight else np.empty(0)
    gpu_days = gpu_hours / 24.0
    return {
        "target": target.name,
        "market": target.market,
        "currency": target.currency,
        "cost": cost,
        "price_cost": target.price_cost,
        "fee_cost": target.fee_cost,
        "creation_fees": c.creation_fees,
        "gpu_hours": gpu_hours,
        "cost_per_gpu_hour": cost / gpu_hours if gpu_hours > 0 else None,
        "availability": float((have * dt).sum() / total_time) if total_time > 0 else None,
        "time_to_acquire_min": (float(run.step_time[first] - run.step_time[0]) / 60.0
                                if first is not None else None),
        "gaps": gaps,
        "gap_min": gap_seconds / 60.0,
        "preemptions": target.preemptions,
        "preemptions_per_gpu_day": target.preemptions / gpu_days if gpu_days > 0 else None,
        "overpay_mean": float(np.average(overpay, weights=weight)) if weight.sum() > 0 else None,
        "overpay_p95": _finite(weighted_quantile(overpay, weight, 0.95)),
        "regret": cost - like_for_like,
        "oracle_like_for_like_cost": like_for_like,
        "oracle_full_cost": oracle.full,
        "oracle_availability": oracle.full_availability,
        "oracle_whole_servers_cost": _finite(oracle.whole),
        "oracle_whole_servers_gpu_hours": _finite(oracle.whole_gpu_hours),
        "oracle_whole_like_for_like_cost": whole_like,
        "surplus_gpu_hours": surplus_gpu_hours(target, dt),
        "orders_created": c.creates,
        "rebuys_within_hour": c.rebuys_within_hour,
        "api_calls": c.api_calls,
        "creates": c.creates,
        "raises": c.raises,
        "lowerings": c.lowerings,
        "cancels": c.cancels,
        "expired": c.expired,
        "step_refusals": c.step_refusals,
        "cooldown_refusals": c.cooldown_refusals,
    }


def surplus_gpu_hours(target: TargetRun, dt: np.ndarray) -> float:
    """GPU-hours held beyond the target's count. For a count of servers, the extra servers'
    share of the GPUs held."""
    units = target.held_units.astype(np.float64)
    extra = np.maximum(units - target.count, 0.0)
    if target.unit == "gpus":
        gpus = extra
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            gpus = np.where(units > 0, target.held_gpus * extra / units, 0.0)
    return float((gpus * dt).sum()) / 3600.0


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


TOTALS = ("cost", "gpu_hours", "regret", "oracle_full_cost", "api_calls", "lowerings",
          "preemptions", "gaps", "gap_min", "surplus_gpu_hours", "orders_created",
          "rebuys_within_hour", "creation_fees")


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A strategy's sums over its targets (costs only when they share a currency)."""
    out: dict[str, Any] = {k: sum(r[k] for r in rows) for k in TOTALS}
    currencies = {r["currency"] for r in rows}
    if len(currencies) != 1:
        for k in ("cost", "regret", "oracle_full_cost", "creation_fees"):
            out[k] = None
    out["currency"] = currencies.pop() if len(currencies) == 1 else "mixed"
    out["cost_per_gpu_hour"] = (out["cost"] / out["gpu_hours"]
                                if out["cost"] is not None and out["gpu_hours"] > 0 else None)
    return out

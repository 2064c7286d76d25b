"""Speed work must not change a single decision: seeded backtests against a recorded trace.

``fixtures/decisions_regression.json`` (``python tests/backtest/test_decisions_regression.py
--write``) holds, per run, every action the plans took (time, kind, target, server, price rounded
to the exchange's 0.0001), the deferrals counted by reason, what each target recorded (counters,
costs, time-weighted sums), the oracle's bounds and a summary of the loaded history. Decisions are
compared exactly, prices within one 0.0001 step and other floats within a relative 1e-6: numpy's
SIMD paths (AVX-512 or not) round the last bit differently, so nothing here is a hash of exact
floats. CI runs this test once more with ``NPY_DISABLE_CPU_FEATURES`` set.

The fixture was first written under ``NPY_DISABLE_CPU_FEATURES="AVX512_ICL X86_V4"`` by the code
that matched the earlier hash fixture (written before the backtest was made fast), so the chain of
"no decision moved" is unbroken. Regenerate it only for a change of decisions that is intended,
and say so in the review.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.backtest.data import History, load_history
from bidder.backtest.exchange import ExchangeRules, StartingOrder
from bidder.backtest.grid import expand_grid
from bidder.backtest.oracle import oracle
from bidder.backtest.runner import RunRecord, RunSettings, Variant, run_variant
from bidder.backtest.reactive import ReactiveSettings
from bidder.rules import action_json
from bidder.config import Config, parse_config
from storage.db import open_database

sys.path.insert(0, str(Path(__file__).parent))  # run as a script to --write
from bt_helpers import config as spot_config, history as hand_built  # noqa: E402
from synthetic_market import T0, write_market  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "decisions_regression.json"
SNAPSHOTS, MACHINES = 480, 60

GIGASPOT = {
    "bot": {"decide_interval": 60.0},
    "budget": {"max_per_day": 3.5, "currency": "USD"},
    "markets": {"gigaspot": {"creation_fee": 0.045, "fee_fraction": 0.025}},
    "targets": [
        {"name": "big", "market": "gigaspot", "count": 12, "gpu_model": "RTX 4090",
         "max_price_per_gpu_day": 14.0, "min_reliability": 0.9, "oc": {"pl": 200}},
        {"name": "small", "market": "gigaspot", "count": 3, "unit": "servers",
         "gpu_model": "3090", "countries": ["DE", "FR"], "max_price_per_gpu_day": 0.35,
         "cap_currency": "USD", "oc": {"pl": 150}},
    ],
}
VARIANTS = [
    *expand_grid("outbid:contested_at=0"),
    *expand_grid("outbid:tick=0.05,switch_margin=0.3,contested_at=0"),
    *expand_grid("fixed:price_per_gpu_day=8"),
    *expand_grid("percentile:quantile=0.6,history_window=10800"),
    *expand_grid("profit:revenue_per_gpu_day=0.3,revenue_currency=USD,margin=0.1,contested_at=0"),
    *expand_grid("outbid"),
]
"""The ``outbid`` and ``profit`` runs were recorded without ``contested_at`` before market memory
became outbid's default (2026-12-03): ``contested_at=0`` keeps their decisions, and ``outbid``'s
default with market memory was added then."""
RECORDED_RULES = ExchangeRules(gigaspot_refusals="max_step", call_latency=0.0)
"""The emulated exchange the fixture was recorded with: until 2026-12-03 GigaSPOT named the step
of a refused lowering (now it refuses silently, as its API does) and calls were taken at the
decision's time (now a second later, as live); the recorded runs keep the rules they were
recorded under, so the chain of "no decision moved" stays unbroken."""
REACTIVE = RunSettings(RECORDED_RULES, reactive=ReactiveSettings(seed=11))


PRICE_DECIMALS = 4
"""The exchange's precision: prices are compared rounded to it (0.0001 CLORE)."""
REL, ABS = 1e-6, 1e-9
"""Tolerance of every other float: numpy's SIMD paths (AVX-512 or not) round differently."""


def _price(value: float | None) -> float | None:
    return None if value is None else round(float(value), PRICE_DECIMALS)


def _actions(plan_actions: Any, now: float) -> list[list[Any]]:
    rows = []
    for action in plan_actions:
        row = action_json(action)
        rows.append([round(now, 3), row["kind"], row["target"], row["server_id"],
                     _price(row.get("price"))])
    return rows


def _sum(values: np.ndarray) -> float:
    return float(np.nansum(np.asarray(values, dtype=np.float64)))


def run_summary(run: RunRecord) -> dict[str, Any]:
    """What a run decided (every action: time, kind, target, server, price) and what it recorded
    (counters exactly, money and time-weighted sums within ``REL``)."""
    assert run.trace is not None
    actions = [row for now, plan in run.trace for row in _actions(plan.actions, now)]
    deferred: dict[str, int] = {}
    for _, plan in run.trace:
        for d in plan.deferred:
            key = f"{d.target} {d.reason}"
            deferred[key] = deferred.get(key, 0) + 1
    targets: dict[str, Any] = {}
    for name, t in sorted(run.targets.items()):
        overpay = np.concatenate(t.overpay) if t.overpay else np.empty(0)
        weight = np.concatenate(t.overpay_weight) if t.overpay_weight else np.empty(0)
        targets[name] = {**asdict(t.counters), "preemptions": t.preemptions,
                         "price_cost": t.price_cost, "fee_cost": t.fee_cost,
                         "held_unit_steps": int(t.held_units.sum()),
                         "held_gpu_steps": int(t.held_gpus.sum()),
                         "paid_per_day_sum": _sum(t.paid_per_day),
                         "marginal_per_day_sum": _sum(t.marginal_per_day),
                         "overpay_samples": int(len(overpay)),
                         "overpay_weighted_sum": _sum(overpay * weight)}
    return {"steps": int(len(run.step_time)), "step_time_sum": _sum(run.step_time),
            "reactive_raises": run.reactive_raises, "actions": actions, "deferred": deferred,
            "targets": targets}


def oracle_summary(history: History, config: Config, runs: list[RunRecord]) -> dict[str, Any]:
    out = {}
    for target in config.targets:
        result = oracle(history, config, target, step_tick=runs[0].step_tick,
                        step_dt=runs[0].step_dt, held=[r.targets[target.name].held_units
                                                       for r in runs])
        out[target.name] = {"like_for_like": result.like_for_like, "full": result.full,
                            "full_availability": result.full_availability,
                            "per_unit_sum": _sum(result.full_per_unit),
                            "per_unit_finite": int(np.isfinite(result.full_per_unit).sum())}
    return out


def history_summary(history: History) -> dict[str, Any]:
    """Sizes exactly, values as sums: what the loader read."""
    out: dict[str, Any] = {"ticks": int(len(history.time)), "time_sum": _sum(history.time),
                           "clore_usd_sum": _sum(history.clore_usd),
                           "my_user_ids": np.asarray(history.my_user_ids).tolist()}
    for name in sorted(history.markets):
        m = history.markets[name]
        market: dict[str, Any] = {"servers": np.asarray(m.server_id).tolist(),
                                  "wins": int(len(m.wins.row)),
                                  "wins_price_sum": _sum(m.wins.price_per_gpu)}
        for label, stream in (("facts", m.facts), ("state", m.state), ("rivals", m.rivals)):
            market[label] = {"changes": int(len(stream.row))}
            for column in sorted(stream.initial):
                values = np.concatenate([np.ravel(np.asarray(stream.initial[column])),
                                         np.ravel(np.asarray(stream.values[column]))])
                if values.dtype.kind in "fc":
                    market[label][column] = _sum(values)
                elif values.dtype.kind in "iub":
                    market[label][column] = int(values.astype(np.int64).sum())
                else:
                    market[label][column] = len(values)
        out[name] = market
    return out


def _runs(history: History, config: Config, jobs: list[tuple[str, Variant, str, dict]]
          ) -> dict[str, Any]:
    runs, out = [], {}
    for label, variant, mode, kw in jobs:
        settings = REACTIVE if mode == "reactive" else RunSettings(RECORDED_RULES)
        run = run_variant(history, config, variant, settings, mode, keep_trace=True, **kw)
        runs.append(run)
        out[label] = run_summary(run)
    out["oracle"] = oracle_summary(history, config, runs)
    return out


def capture(folder: Path) -> dict[str, Any]:
    """Every case's summaries, computed by the code under test."""
    path = folder / "synthetic.db"
    write_market(path, snapshots=SNAPSHOTS, machines=MACHINES, seed=2024)
    result: dict[str, Any] = {}
    for allocation in ("host_profit", "highest_price"):
        cfg = parse_config({**GIGASPOT, "markets": {
            "gigaspot": {**GIGASPOT["markets"]["gigaspot"], "allocation": allocation}}})
        with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
            history = load_history(session, cfg.targets, allocation=allocation,
                                   extra_servers={"gigaspot": [20_003]})
        jobs = [(f"{v.label} replay", v, "replay", {}) for v in VARIANTS]
        if allocation == "host_profit":
            jobs += [(f"{v.label} reactive", v, "reactive", {})
                     for v in (VARIANTS[0], VARIANTS[4], VARIANTS[5])]
            session_start = [StartingOrder("big", 20_003, 30.0, created_at=T0 - 600,
                                           order_id=9001),
                             StartingOrder("big", int(history.markets["gigaspot"].server_id[0]),
                                           25.0, created_at=T0 - 7200, order_id=9002)]
            times = (T0 + 45.0 + 97.0 * np.arange(200)).tolist()
            jobs.append(("outbid live session", VARIANTS[0], "replay",
                         {"decision_times": times, "starting_orders": session_start}))
        else:
            jobs = [*jobs[:3], jobs[5]]
        result[allocation] = {"history": history_summary(history),
                              **_runs(history, cfg, jobs)}

    rng = np.random.default_rng(7)
    n_ticks, n = 300, 24
    walk = np.exp(np.cumsum(rng.normal(0, 0.05, (n_ticks, n)), axis=0)) * rng.uniform(2, 6, n)
    gpus = rng.choice([1, 2, 4], n).tolist()
    spot = hand_built(np.where(rng.random((n_ticks, n)) < 0.2, np.nan, walk * np.array(gpus)),
                      gpus=gpus, floor=rng.uniform(0.5, 2.5, n) * np.array(gpus),
                      online=rng.random((n_ticks, n)) > 0.03, market="spot",
                      new_bid_when_price_changes=True)
    cfg = spot_config(count=5, cap=6.0, market="spot", fee=0.025, creation_fee=0.1)
    result["spot"] = _runs(spot, cfg, [(f"{v.label} {mode}", v, mode, {})
                                       for v in (VARIANTS[0], VARIANTS[2], VARIANTS[5])
                                       for mode in ("replay", "reactive")])
    return result


def _diff(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` departs from ``expected``: structure, strings and integers exactly; action
    prices (rounded to the exchange's precision) within one 0.0001 step, since a rounding may land
    on the other side of it; other floats within ``REL``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            out += _diff(expected.get(key), actual.get(key), f"{path}/{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}"
                    + _first_difference(expected, actual)]
        return [line for i, (e, a) in enumerate(zip(expected, actual))
                for line in _diff(e, a, f"{path}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) \
            and not isinstance(actual, bool):
        price = "/actions[" in path and path.endswith("[4]")  # one 0.0001 step at most
        tolerance = 1.01 * 10.0 ** -PRICE_DECIMALS if price else max(REL * abs(expected), ABS)
        return [] if abs(expected - actual) <= tolerance else \
            [f"{path}: expected {expected!r}, got {actual!r}"]
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


def _first_difference(expected: list[Any], actual: list[Any]) -> str:
    for i, (e, a) in enumerate(zip(expected, actual)):
        if _diff(e, a):
            return f"; first difference at [{i}]: expected {e!r}, got {a!r}"
    return ""


def test_decisions_are_those_recorded_before_the_speed_work(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    actual = json.loads(json.dumps(capture(tmp_path)))  # the fixture's own float round trip
    differences = _diff(expected, actual)
    assert not differences, "\n".join(differences[:40])


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write   (rewrites {FIXTURE.name})")
    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.parent.mkdir(exist_ok=True)
        text = json.dumps(capture(Path(tmp)), indent=1, sort_keys=True)
        # one line per action: innermost lists of plain values are folded
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]",
                      text)
        FIXTURE.write_text(text + "\n")
    print(f"wrote {FIXTURE}")

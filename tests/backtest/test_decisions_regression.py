"""Speed work must not change a single decision: seeded backtests against a recorded trace.

``fixtures/decisions_regression.json`` was written by the code *before* the backtest was made
fast (``python tests/backtest/test_decisions_regression.py --write``). It holds, per run, a digest
of the full trace of plans (every action and deferral, floats exact) and of everything the run
recorded step by step, the oracle's bounds, and a digest of the loaded history; plus readable
summaries, so a failure shows what moved. Regenerate it only for a change of decisions that is
intended, and say so in the review.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.backtest.data import History, load_history
from bidder.backtest.exchange import StartingOrder
from bidder.backtest.grid import expand_grid
from bidder.backtest.oracle import oracle
from bidder.backtest.runner import RunRecord, RunSettings, Variant, run_variant
from bidder.backtest.reactive import ReactiveSettings
from bidder.config import Config, parse_config
from storage.db import open_database

sys.path.insert(0, str(Path(__file__).parent))  # run as a script to --write
from bt_helpers import config as spot_config, history as hand_built  # noqa: E402
from synthetic_market import T0, digest, history_digest, write_market  # noqa: E402

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
    *expand_grid("outbid"),
    *expand_grid("outbid:tick=0.05,switch_margin=0.3"),
    *expand_grid("fixed:price_per_gpu_day=8"),
    *expand_grid("percentile:quantile=0.6,history_window=10800"),
    *expand_grid("profit:revenue_per_gpu_day=0.3,revenue_currency=USD,margin=0.1"),
]
REACTIVE = RunSettings(reactive=ReactiveSettings(seed=11))


def run_summary(run: RunRecord) -> dict[str, Any]:
    assert run.trace is not None
    trace = digest(*((now, plan.actions, plan.deferred) for now, plan in run.trace))
    parts: list[Any] = [run.step_time, run.step_tick, run.step_dt, run.reactive_raises]
    readable: dict[str, Any] = {}
    for name, t in sorted(run.targets.items()):
        parts += [name, t.held_units, t.held_gpus, t.paid_per_day, t.marginal_per_day,
                  t.counters, t.preemptions, t.price_cost, t.fee_cost,
                  np.concatenate(t.overpay) if t.overpay else np.empty(0),
                  np.concatenate(t.overpay_weight) if t.overpay_weight else np.empty(0)]
        readable[name] = {**asdict(t.counters), "preemptions": t.preemptions,
                          "price_cost": t.price_cost, "held_unit_steps": int(t.held_units.sum())}
    return {"trace_sha256": trace, "record_sha256": digest(*parts),
            "actions": sum(len(p.actions) for _, p in run.trace),
            "deferred": sum(len(p.deferred) for _, p in run.trace), "targets": readable}


def oracle_summary(history: History, config: Config, runs: list[RunRecord]) -> dict[str, Any]:
    out = {}
    for target in config.targets:
        result = oracle(history, config, target, step_tick=runs[0].step_tick,
                        step_dt=runs[0].step_dt, held=[r.targets[target.name].held_units
                                                       for r in runs])
        out[target.name] = {"like_for_like": result.like_for_like, "full": result.full,
                            "full_availability": result.full_availability,
                            "per_unit_sha256": digest(result.full_per_unit)}
    return out


def _runs(history: History, config: Config, jobs: list[tuple[str, Variant, str, dict]]
          ) -> dict[str, Any]:
    runs, out = [], {}
    for label, variant, mode, kw in jobs:
        settings = REACTIVE if mode == "reactive" else RunSettings()
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
            jobs += [(f"{v.label} reactive", v, "reactive", {}) for v in (VARIANTS[0], VARIANTS[4])]
            session_start = [StartingOrder("big", 20_003, 30.0, created_at=T0 - 600,
                                           order_id=9001),
                             StartingOrder("big", int(history.markets["gigaspot"].server_id[0]),
                                           25.0, created_at=T0 - 7200, order_id=9002)]
            times = (T0 + 45.0 + 97.0 * np.arange(200)).tolist()
            jobs.append(("outbid live session", VARIANTS[0], "replay",
                         {"decision_times": times, "starting_orders": session_start}))
        else:
            jobs = jobs[:3]
        result[allocation] = {"history_sha256": history_digest(history),
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
                                       for v in (VARIANTS[0], VARIANTS[2])
                                       for mode in ("replay", "reactive")])
    return result


def _diff(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            out += _diff(expected.get(key), actual.get(key), f"{path}/{key}")
        return out
    return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]


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
        FIXTURE.write_text(json.dumps(capture(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")

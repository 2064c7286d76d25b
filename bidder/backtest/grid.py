"""Many variants at once: parameter grids, one process per run on every core, then the oracle.

History is loaded once, before the worker processes are forked, so every worker reads the same
arrays without copying or pickling them (copy-on-write pages; the collector is kept off them).
Each (variant, mode) pair is one job; workers report their steps through shared counters so the
parent can draw a progress bar. The oracle's market side (``oracle.covers``) needs nothing of
the runs: a forked process works it out while they go on, and the parent then bounds every
run's holdings with it.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from bidder.backtest.data import History
from bidder.backtest.exchange import StartingOrder
from bidder.backtest.metrics import target_metrics, totals
from bidder.backtest.oracle import Covers, OracleResult, bounds, covers, oracle
from bidder.backtest.runner import (
    RunRecord,
    RunSettings,
    Variant,
    run_variant,
    step_durations,
    steps,
)
from bidder.config import Config, TargetConfig
from bidder.memory import MarketMemory
from strategies.registry import StrategyError, load_strategy, parse_strategy_arg

GRID_SEPARATOR = "|"


def expand_grid(arg: str) -> list[Variant]:
    """``outbid:tick=0.01|0.05,switch_margin=0.1`` -> one ``Variant`` per combination of the
    ``|`` alternatives, each checked (unknown strategy or wrong parameter: ``StrategyError``)."""
    name, sep, rest = arg.rpartition(":")
    if not sep or "=" not in rest:
        name, items = arg, []
    else:
        items = [item.partition("=") for item in rest.split(",")]
    choices = [[f"{key.strip()}={v.strip()}" for v in value.split(GRID_SEPARATOR)]
               for key, _, value in items]
    variants = []
    for combo in itertools.product(*choices):
        label = f"{name}:{','.join(combo)}" if combo else name
        strategy, params = parse_strategy_arg(label)
        variant = Variant(label, strategy, params)
        load_strategy(strategy, params)  # refuses an unknown strategy or a bad parameter now
        variants.append(variant)
    if not variants:
        raise StrategyError(f"strategy argument {arg!r} names no variant")
    return variants


@dataclass(frozen=True, slots=True)
class Job:
    variant: Variant
    mode: str


@dataclass(slots=True)
class BacktestResult:
    runs: list[RunRecord]
    metrics: list[dict[str, Any]]
    """Per run: ``{"strategy", "mode", "targets": [...], "total": {...}}``"""
    oracles: dict[str, OracleResult]


_SHARED: dict[str, Any] = {}
"""What forked workers inherit: set just before the pool starts, cleared when it ends."""


def _work(index: int) -> RunRecord:
    shared = _SHARED
    job: Job = shared["jobs"][index]
    done = shared["done"]

    def report(steps: int) -> None:
        done[index] = steps

    return run_variant(shared["history"], shared["config"], job.variant, shared["settings"],
                       job.mode, targets=shared["targets"], progress=report,
                       decision_times=shared["decision_times"],
                       starting_orders=shared["starting_orders"], memories=shared["memories"])


def run_backtest(history: History, config: Config, variants: Sequence[Variant],
                 settings: RunSettings, *, modes: Sequence[str], targets: Sequence[TargetConfig],
                 workers: int = 1, progress: Callable[[float], None] | None = None,
                 decision_times: Sequence[float] | None = None,
                 starting_orders: Sequence[StartingOrder] = (),
                 memories: Mapping[str, MarketMemory] | None = None) -> BacktestResult:
    """Every variant in every mode over ``history``, on ``workers`` processes, then the oracle
    and the metrics. ``progress(fraction_done)`` is called about five times a second.
    ``memories``: the market memory each target's strategy starts with (``bidder.warmup``)."""
    jobs = [Job(v, m) for v in variants for m in modes]
    _SHARED.update(history=history, config=config, settings=settings, targets=list(targets),
                   jobs=jobs, decision_times=decision_times,
                   starting_orders=tuple(starting_orders), memories=dict(memories or {}))
    step_time, step_tick, _ = steps(history, config.bot.decide_interval, decision_times)
    _SHARED.update(step_tick=step_tick, step_dt=step_durations(step_time))
    # what is loaded stays for the whole backtest: out of the collector's way, it is not walked
    # at every full collection (nor are its pages touched, and so copied, in forked workers)
    gc.freeze()
    try:
        with _covers_meanwhile(bool(jobs)) as all_covers:
            if workers <= 1 or len(jobs) == 1:
                _SHARED["done"] = [0] * len(jobs)
                runs = []
                for i in range(len(jobs)):
                    runs.append(_work(i))
                    if progress is not None:
                        progress((i + 1) / len(jobs))
            else:
                runs = _in_pool(len(jobs), min(workers, len(jobs)), len(step_tick), progress)
            covers_by_target = all_covers()
    finally:
        _SHARED.clear()
        gc.unfreeze()
    oracles, metrics = _score(history, config, targets, runs, starting_orders, covers_by_target)
    return BacktestResult(runs, metrics, oracles)


@contextmanager
def _covers_meanwhile(needed: bool) -> Iterator[Callable[[], dict[str, Covers]]]:
    """The oracle's market side (``oracle.covers``) of every target, computed by a forked process
    while the runs go on: it needs nothing of them, and would otherwise come after them."""
    if not needed or "fork" not in mp.get_all_start_methods():
        yield _all_covers if needed else dict
        return
    with mp.get_context("fork").Pool(1) as pool:
        pending = pool.apply_async(_all_covers)
        yield pending.get


def _all_covers() -> dict[str, Covers]:
    shared = _SHARED
    history: History = shared["history"]
    starting: tuple[StartingOrder, ...] = shared["starting_orders"]
    return {t.name: covers(history, shared["config"], t, step_tick=shared["step_tick"],
                           step_dt=shared["step_dt"], most=_most_held(history, t),
                           starting={o.server_id: o.price for o in starting
                                     if o.target == t.name})
            for t in shared["targets"]}


def _most_held(history: History, target: TargetConfig) -> int:
    """Units a run of ``target`` holds at most, short of a strategy that wants more than it
    asks for: the count, plus what a cover overshoots by (less than one server)."""
    if target.unit == "servers":
        return target.count + 1
    facts = history.markets[target.market].facts
    return target.count + int(max(facts.initial["gpus"].max(initial=0),
                                  facts.values["gpus"].max(initial=0)))


def _in_pool(n_jobs: int, workers: int, steps_per_job: int,
             progress: Callable[[float], None] | None) -> list[RunRecord]:
    context = mp.get_context("fork")
    done = context.Array("q", n_jobs, lock=False)
    _SHARED["done"] = done
    with context.Pool(workers) as pool:
        pending = pool.map_async(_work, range(n_jobs), chunksize=1)
        while not pending.ready():
            pending.wait(0.2)
            if progress is not None:
                progress(min(sum(done) / (steps_per_job * n_jobs), 1.0))
        runs = pending.get()
    if progress is not None:
        progress(1.0)
    return runs


def _score(history: History, config: Config, targets: Sequence[TargetConfig],
           runs: Sequence[RunRecord], starting_orders: Sequence[StartingOrder],
           covers_by_target: Mapping[str, Covers]
           ) -> tuple[dict[str, OracleResult], list[dict[str, Any]]]:
    oracles: dict[str, OracleResult] = {}
    like: dict[tuple[int, str], float] = {}
    whole_like: dict[tuple[int, str], float] = {}
    if not runs:
        return oracles, []
    first = runs[0]
    for target in targets:
        held = [r.targets[target.name].held_units for r in runs]
        target_covers = covers_by_target[target.name]
        if max(int(h.max(initial=0)) for h in held) <= target_covers.most:
            result = bounds(target_covers, held)
        else:  # a strategy held more than covers reach: the oracle again, as far as needed
            starting = {o.server_id: o.price for o in starting_orders if o.target == target.name}
            result = oracle(history, config, target, step_tick=first.step_tick,
                            step_dt=first.step_dt, held=held, starting=starting)
        oracles[target.name] = result
        for k, cost in enumerate(result.like_for_like):
            like[(k, target.name)] = cost
        for k, cost in enumerate(result.whole_like_for_like):
            whole_like[(k, target.name)] = cost
    metrics = []
    for k, run in enumerate(runs):
        rows = [target_metrics(run, run.targets[t.name], oracles[t.name], like[(k, t.name)],
                               whole_like=whole_like.get((k, t.name)))
                for t in targets]
        metrics.append({"strategy": run.variant.label, "mode": run.mode, "targets": rows,
                        "total": totals(rows), "reactive_raises": run.reactive_raises})
    return oracles, metrics


class ProgressBar:
    """A one-line progress bar on a terminal (``\\r``), silent elsewhere unless forced."""

    def __init__(self, stream: TextIO | None = None, *, force: bool = False, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream  # today's, not the one at import
        self.enabled = force or (hasattr(stream, "isatty") and stream.isatty())
        self.width = width
        self._clock = clock
        self._start = clock()
        self._finished = False

    def __call__(self, fraction: float) -> None:
        if not self.enabled or self._finished:
            return
        filled = int(round(fraction * self.width))
        elapsed = self._clock() - self._start
        left = f"~{elapsed * (1 - fraction) / fraction:4.0f} s left" if fraction > 0 else ""
        self.stream.write(f"\rbacktest [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{fraction:4.0%}  {elapsed:5.0f} s elapsed {left}")
        if fraction >= 1.0:
            self._finished = True
            self.stream.write("\n")
        self.stream.flush()


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


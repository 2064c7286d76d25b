"""Strategy search with Optuna: each trial is one backtest through the same engine as
``bidder backtest``; the study may live in a database that many processes, on many machines, share.

The objective is a cost at an availability floor: a trial that holds less than ``min_availability``
of its target is *infeasible* and scores ``INFEASIBLE`` plus its shortfall, so it ranks below every
feasible trial (and the less it falls short, the better), whatever its cost. The history is loaded
once per process; the oracle's market side (``covers``) is worked out once, and each trial's regret
is bounded from it, as ``bidder.backtest.grid`` does for a grid.

With a holdout, trials are scored on the history before it only; the top trials are then run on
the holdout too, and both results are reported side by side, so a parameter set that only fits the
in-sample period shows up.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bidder.backtest.data import History
from bidder.backtest.metrics import target_metrics
from bidder.backtest.oracle import Covers, bounds, covers, oracle
from bidder.backtest.runner import RunSettings, Variant, run_variant, step_durations, steps
from bidder.config import Config, TargetConfig
from bidder.plain import plain
from strategies.registry import StrategyError, load_strategy

OBJECTIVES = ("cost_per_gpu_hour", "cost", "regret")
"""What a trial minimises (at the availability floor)."""
INFEASIBLE = 1e9
"""Added to the value of a trial under the availability floor: worse than any feasible trial."""
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class SpaceError(ValueError):
    """A search space the strategy cannot take; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    low: float
    high: float
    log: bool
    integer: bool

    def describe(self) -> str:
        return f"{self.name}={self.low:g}:{self.high:g}{':log' if self.log else ''}"


def parse_space(text: str, strategy: str) -> list[Dimension]:
    """``'tick=0.01:2.0:log,switch_margin=0.0:0.3'`` -> dimensions, each checked against the
    strategy's parameters (name, integer or not, and both ends accepted by its validation)."""
    try:
        params_model = type(load_strategy(strategy, {})).Params
    except StrategyError:
        raise
    except Exception as err:  # a strategy whose defaults are not enough: say so
        raise SpaceError(f"strategy {strategy!r} cannot be created with its defaults: {err}") \
            from None
    fields = params_model.model_fields
    dims: list[Dimension] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, spec = (p.strip() for p in item.partition("="))
        if not eq or not name:
            raise SpaceError(f"--space item {item!r}: expected name=low:high[:log]")
        if name not in fields:
            raise SpaceError(f"--space: strategy {strategy!r} has no parameter {name!r} "
                             f"(its parameters: {', '.join(sorted(fields)) or 'none'})")
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise SpaceError(f"--space {name}={spec}: expected low:high or low:high:log")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise SpaceError(f"--space {name}={spec}: low and high must be numbers") from None
        log = len(parts) == 3
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise SpaceError(f"--space {name}={spec}: low must be below high")
        if log and low <= 0:
            raise SpaceError(f"--space {name}={spec}: a log range must start above 0")
        integer = fields[name].annotation is int
        if integer and not (low.is_integer() and high.is_integer()):
            raise SpaceError(f"--space {name}={spec}: {name} is an integer parameter")
        if any(d.name == name for d in dims):
            raise SpaceError(f"--space names {name!r} twice")
        for end in (low, high):
            try:
                load_strategy(strategy, {name: int(end) if integer else end})
            except StrategyError as err:
                raise SpaceError(f"--space {name}={spec}: {end:g} is not allowed ({err})") \
                    from None
        dims.append(Dimension(name, low, high, log, integer))
    if not dims:
        raise SpaceError("--space names no parameter")
    return dims


def parse_duration(text: str) -> float:
    """``'6h'``, ``'2d'``, ``'90m'``, ``'3600'`` (seconds) -> seconds."""
    match = DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a positive duration such as 6h, 2d, 90m or 3600")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def objective_value(metrics: Mapping[str, Any], objective: str, floor: float) -> float:
    """The number a trial minimises: the objective when availability reaches ``floor``;
    ``INFEASIBLE`` plus the shortfall otherwise (and when nothing was held)."""
    availability = metrics.get("availability") or 0.0
    value = metrics.get(objective)
    if availability + 1e-12 < floor or value is None or not math.isfinite(value):
        return INFEASIBLE * (1.0 + max(floor - availability, 0.0))
    return float(value)


@dataclass(slots=True)
class Scorer:
    """Backtests one target over one history: ``score(params)`` -> the run's metrics. The
    oracle's market side is worked out once, on first use."""

    history: History
    config: Config
    target: TargetConfig
    strategy: str
    settings: RunSettings
    mode: str
    _covers: Covers | None = field(default=None, init=False)

    def score(self, params: Mapping[str, Any]) -> dict[str, Any]:
        label = f"{self.strategy}:" + ",".join(f"{k}={v}" for k, v in params.items())
        run = run_variant(self.history, self.config, Variant(label, self.strategy, dict(params)),
                          self.settings, self.mode, targets=[self.target])
        record = run.targets[self.target.name]
        held = record.held_units
        cover = self._cover()
        if int(held.max(initial=0)) <= cover.most:
            result = bounds(cover, [held])
        else:  # held more than the covers reach: the oracle again, as far as needed
            result = oracle(self.history, self.config, self.target, step_tick=run.step_tick,
                            step_dt=run.step_dt, held=[held])
        return target_metrics(run, record, result, result.like_for_like[0])

    def _cover(self) -> Covers:
        if self._covers is None:
            step_time, step_tick, _ = steps(self.history, self.config.bot.decide_interval, None)
            self._covers = covers(self.history, self.config, self.target, step_tick=step_tick,
                                  step_dt=step_durations(step_time), most=_most_held(
                                      self.history, self.target), starting={})
        return self._covers


def _most_held(history: History, target: TargetConfig) -> int:
    """Units a run holds at most, short of a strategy that wants more than it asks for (as the
    grid's oracle does): the count plus less than one server."""
    if target.unit == "servers":
        return target.count + 1
    facts = history.markets[target.market].facts
    return target.count + int(max(facts.initial["gpus"].max(initial=0),
                                  facts.values["gpus"].max(initial=0)))


def worker_name() -> str:
    """Which process ran a trial: ``host:pid`` (studies are shared between machines)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def suggest(trial: Any, dims: Sequence[Dimension]) -> dict[str, Any]:
    return {d.name: (trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log) if d.integer
                     else trial.suggest_float(d.name, d.low, d.high, log=d.log))
            for d in dims}


METRIC_ATTRS = ("cost", "cost_per_gpu_hour", "availability", "gpu_hours", "regret", "gaps",
                "preemptions", "api_calls")


def trial_objective(scorer: Scorer, dims: Sequence[Dimension], objective: str, floor: float,
                    report: Callable[[int, dict[str, Any], dict[str, Any], float], None] | None
                    = None) -> Callable[[Any], float]:
    """The function Optuna calls per trial: suggest, backtest, keep the metrics on the trial."""

    def run(trial: Any) -> float:
        params = suggest(trial, dims)
        metrics = scorer.score(params)
        value = objective_value(metrics, objective, floor)
        for key in METRIC_ATTRS:
            trial.set_user_attr(key, plain(metrics.get(key)))
        trial.set_user_attr("feasible", value < INFEASIBLE)
        trial.set_user_attr("worker", worker_name())
        if report is not None:
            report(trial.number, params, metrics, value)
        return value

    return run


def study_setup(strategy: str, target: str, mode: str, objective: str, floor: float,
                dims: Sequence[Dimension], holdout: float | None, start: float | None,
                end: float | None, *, clore_usd: float | None = None) -> dict[str, Any]:
    """What a shared study's trials must agree on; a process with another setup is refused.
    A given USD per CLORE (``--clore-usd``) is part of it: trials scored at other rates do not
    compare (a study started without one keeps its setup as it was)."""
    setup = {"strategy": strategy, "target": target, "mode": mode, "objective": objective,
             "min_availability": floor, "space": [d.describe() for d in dims],
             "holdout_seconds": holdout, "from": start, "to": end}
    if clore_usd is not None:
        setup["clore_usd"] = clore_usd
    return setup

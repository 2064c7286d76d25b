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

import dataclasses
import json
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
from bidder.backtest.runner import (
    BACKTEST_MODEL,
    RunSettings,
    Variant,
    run_variant,
    step_durations,
    steps,
)
from bidder.config import Config, TargetConfig
from bidder.memory import MarketMemory
from bidder.plain import plain
from bidder.status import fmt_utc
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

    def middle(self) -> float | int:
        """A value inside the range, to check the other parameters' ends against."""
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return round(mid) if self.integer else mid


def parse_space(text: str, strategy: str, base: Mapping[str, Any] | None = None) \
        -> list[Dimension]:
    """``'tick=0.01:2.0:log,switch_margin=0.0:0.3'`` -> dimensions, each checked against the
    strategy's parameters (name, integer or not, and both ends accepted by its validation).

    ``base``: the parameters the trials hold fixed (the target's ``strategy_params`` when it runs
    this strategy); the ends are checked with them and the other ranges' middles, so a strategy
    with a required parameter (``fixed``, ``profit``) is searched with it in ``base`` or here."""
    base = dict(base or {})
    items = [_item(part) for part in (p.strip() for p in text.split(",")) if part]
    if not items:
        raise SpaceError("--space names no parameter")
    fields = type(_instance(strategy, base, items)).Params.model_fields
    dims: list[Dimension] = []
    for name, low, high, log, spec in items:
        if name not in fields:
            raise SpaceError(f"--space: strategy {strategy!r} has no parameter {name!r} "
                             f"(its parameters: {', '.join(sorted(fields)) or 'none'})")
        integer = fields[name].annotation is int
        if integer and not (low.is_integer() and high.is_integer()):
            raise SpaceError(f"--space {name}={spec}: {name} is an integer parameter")
        if any(d.name == name for d in dims):
            raise SpaceError(f"--space names {name!r} twice")
        dims.append(Dimension(name, low, high, log, integer))
    middles = {**base, **{d.name: d.middle() for d in dims}}
    try:
        _create(strategy, middles)
    except StrategyError as err:
        raise SpaceError(f"--space: {err} (the parameters at the target's strategy_params and "
                         "each range's middle)") from None
    for d in dims:
        for end in (d.low, d.high):
            try:
                _create(strategy, {**middles, d.name: int(end) if d.integer else end})
            except StrategyError as err:
                raise SpaceError(f"--space {d.describe()}: {end:g} is not allowed ({err})") \
                    from None
    return dims


def _item(text: str) -> tuple[str, float, float, bool, str]:
    """One ``name=low:high[:log]`` -> name, low, high, log and the spec (for messages)."""
    name, eq, spec = (p.strip() for p in text.partition("="))
    if not eq or not name:
        raise SpaceError(f"--space item {text!r}: expected name=low:high[:log]")
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
    return name, low, high, log, spec


def _instance(strategy: str, base: Mapping[str, Any],
              items: Sequence[tuple[str, float, float, bool, str]]) -> Any:
    """An instance of ``strategy``, only to learn its parameters: made with ``base`` and the
    ranges' middles (a required parameter may be given as a range only), else with ``base``
    alone (a name it does not know is then refused by name); the first error if neither works."""
    middles = {name: (low + high) / 2 for name, low, high, _, _ in items}
    try:
        return _create(strategy, {**base, **middles})
    except StrategyError as err:
        first = err
    try:
        return _create(strategy, base)
    except StrategyError:
        raise first from None


def _create(strategy: str, params: Mapping[str, Any]) -> Any:
    """``load_strategy``, with any other error of a strategy that breaks on creation said so."""
    try:
        return load_strategy(strategy, params)
    except StrategyError:
        raise
    except Exception as err:
        raise SpaceError(f"strategy {strategy!r} cannot be created: {err}") from None


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
    base: Mapping[str, Any] = field(default_factory=dict)
    """Parameters every trial holds fixed (the target's ``strategy_params``); ``params`` win."""
    memories: Mapping[str, MarketMemory] = field(default_factory=dict)
    """The market memory each run starts with (``bidder.warmup``), when its strategy uses one."""
    _covers: Covers | None = field(default=None, init=False)

    def score(self, params: Mapping[str, Any]) -> dict[str, Any]:
        label = f"{self.strategy}:" + ",".join(f"{k}={v}" for k, v in params.items())
        variant = Variant(label, self.strategy, {**self.base, **params})
        run = run_variant(self.history, self.config, variant, self.settings, self.mode,
                          targets=[self.target], memories=self.memories)
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


BOT_SETTINGS = ("decide_interval", "rebuy_block", "failed_rent_block")
"""The ``[bot]`` settings a backtest reads (``bidder.backtest.runner``, ``bidder.warmup``); the
others only steer the live bot, and changing them must not stop a study from being resumed."""
POLLER_SETTINGS = ("spot_interval", "spot_polls_per_round")
"""The ``[poller]`` settings a spot target's backtest reads (its first watch-list round)."""
NOT_SCORED = frozenset({"name", "image", "command", "env", "ports", "ssh_key", "ssh_password",
                        "jupyter_token", "strategy", "strategy_params"})
"""Target fields left out of a study's setup: what runs on a rented server and its secrets (no
backtest reads them, and a shared study is no place for secrets), and what the setup holds
already (the name; the ``strategy_params`` trials hold)."""
OPTIONAL_SETUP = ("clore_usd", "strategy_params")
"""Setup keys present only when given; every other key is recorded by every study this bidder
starts, so a stored setup without one was written by an older bidder."""
ABSENT = object()


def span(history: History) -> dict[str, Any]:
    """The period a history covers as loaded: first and last tick time and the tick count."""
    return {"first": float(history.time[0]), "last": float(history.time[-1]),
            "ticks": int(history.n_ticks)}


def run_conditions(config: Config, target: TargetConfig, settings: RunSettings, mode: str,
                   in_sample: History, held_out: History | None,
                   market_memory: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything besides the command line that changes a trial's score: the target as
    configured, its market's rules as charged (with the recorded creation fee), the budget and
    the ``[bot]``/``[poller]`` settings a backtest reads, the emulated exchange's settings (the
    reactive rivals' only in reactive mode), the history as loaded, the market memory runs start
    with (None: the strategy uses none) and the backtest's model. A config edited or a recording
    grown between two processes of one study shows up here."""
    run = dataclasses.asdict(settings)
    if mode != "reactive":
        run["reactive"] = None  # replay runs have no rivals that answer: their seed changes nothing
    return {
        "target_config": target.model_dump(mode="json", exclude=set(NOT_SCORED)),
        "market_rules": config.markets.rules(target.market).model_dump(mode="json"),
        "budget": config.budget.model_dump(mode="json"),
        "bot": {k: getattr(config.bot, k) for k in BOT_SETTINGS},
        "poller": ({k: getattr(config.poller, k) for k in POLLER_SETTINGS}
                   if target.market == "spot" else None),
        "run_settings": run,
        "history": {"in_sample": span(in_sample),
                    "held_out": span(held_out) if held_out is not None else None},
        "market_memory": dict(market_memory) if market_memory is not None else None,
        "backtest_model": BACKTEST_MODEL,
    }


def study_setup(strategy: str, target: str, mode: str, objective: str, floor: float,
                dims: Sequence[Dimension], holdout: float | None, start: float | None,
                end: float | None, *, clore_usd: float | None = None,
                base: Mapping[str, Any] | None = None,
                conditions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a shared study's trials must agree on; a process with another setup is refused.
    A given USD per CLORE (``--clore-usd``) and the parameters held fixed (``base``) are part of
    it: trials scored at other rates or parameters do not compare (a study started without
    either keeps its setup as it was). ``conditions`` (``run_conditions``) adds what the config
    and the recording decide. The result is as JSON gives it back (lists, not tuples; no NaN),
    so a setup read from the study compares equal to the one that wrote it."""
    setup = {"strategy": strategy, "target": target, "mode": mode, "objective": objective,
             "min_availability": floor, "space": [d.describe() for d in dims],
             "holdout_seconds": holdout, "from": start, "to": end}
    if clore_usd is not None:
        setup["clore_usd"] = clore_usd
    if base:
        setup["strategy_params"] = plain(dict(base))
    setup.update(conditions or {})
    return json.loads(json.dumps(plain(setup), allow_nan=False))


def setup_refusal(study: str, found: Any, setup: Mapping[str, Any]) -> str | None:
    """Why a study whose stored setup is ``found`` cannot take trials scored under ``setup``,
    in one line (None: it can): the keys an older bidder did not record, else each differing
    key and, inside nested settings, each differing value as stored -> as now."""
    if not isinstance(found, Mapping):
        return (f"study {study!r} has a setup this bidder cannot read ({_short(found)}); "
                "name another --study")
    missing = sorted(k for k in setup if k not in found and k not in OPTIONAL_SETUP)
    if missing:
        return (f"study {study!r} was started by an older bidder that did not record "
                f"{', '.join(missing)}; name another --study")
    differ = sorted(k for k in {*setup, *found} if found.get(k, ABSENT) != setup.get(k, ABSENT))
    if not differ:
        return None
    changes = [c for k in differ for c in _changes(k, found.get(k, ABSENT), setup.get(k, ABSENT))]
    return (f"study {study!r} was started with other settings ({', '.join(differ)}: "
            f"{'; '.join(changes)}); name another --study")


def _changes(path: str, old: Any, new: Any) -> list[str]:
    """``path old -> new`` for each differing value, nested dicts walked."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted({*old, *new}, key=str)
                if old.get(k, ABSENT) != new.get(k, ABSENT)
                for c in _changes(f"{path}.{k}", old.get(k, ABSENT), new.get(k, ABSENT))]
    when = path.rsplit(".", 1)[-1] in TIME_KEYS
    return [f"{path} {_short(old, when=when)} -> {_short(new, when=when)}"]


TIME_KEYS = frozenset({"from", "to", "first", "last", "since"})
"""Setup keys holding a moment (UNIX seconds): a refusal shows them as a person reads them."""


def _short(value: Any, most: int = 48, *, when: bool = False) -> str:
    if when and isinstance(value, int | float) and not isinstance(value, bool):
        return fmt_utc(float(value))
    text = "(not set)" if value is ABSENT else repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."

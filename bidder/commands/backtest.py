"""``bidder backtest``: replay the recorded market through strategies and the live rules engine."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidder.commands import database_url, usd_per_clore
from bidder.logs import log_options

if TYPE_CHECKING:
    from bidder.backtest.exchange import ExchangeRules
    from bidder.backtest.runner import RunSettings
    from bidder.config import Config

HELP = ("Replay the recorded market (GigaSPOT snapshots, spot polls) through strategies and the "
        "bot's own rules engine; compare them against an oracle that knows the future.")


class UsageError(ValueError):
    """Bad input: shown as it is, exit code 2, nothing written."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bidder.backtest.grid import default_workers
    from bidder.backtest.runner import FILLS, MODES
    from bidder.sim.options import PAYMENTS

    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file: targets, market rules, fees, budget (default: "
                             "built-in defaults, which have no targets)")
    parser.add_argument("--db", type=database_url, default=None, metavar="PATH|URL",
                        help="the database: a SQLite file or a database URL (default: the "
                             "config's [storage] url or bidder.db)")
    parser.add_argument("--clore-usd", type=usd_per_clore, default=None, metavar="USD",
                        help="USD per CLORE wherever the recording has none (imported CDN files "
                             "carry no rate; host_profit and USD caps and budgets need one)")
    parser.add_argument("--strategy", action="append", default=None, metavar="NAME[:k=v,...]",
                        help="a strategy and its parameters, e.g. outbid:tick=0.05; repeat it to "
                             "compare strategies; 'a|b' in a value makes a grid "
                             "(outbid:tick=0.01|0.05)")
    parser.add_argument("--target", action="append", default=None, metavar="NAME",
                        help="backtest only this configured target (repeatable; default: all)")
    parser.add_argument("--from", dest="start", default=None, metavar="T",
                        help="start: ISO 8601 (UTC unless it says otherwise) or UNIX seconds")
    parser.add_argument("--to", dest="end", default=None, metavar="T", help="end, inclusive")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both",
                        help="replay: rivals as recorded; reactive: the best rival answers our "
                             "bids like the simulated market's outbidders")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes to spread the runs over")
    parser.add_argument("--step-rule", default=None,
                        help="the exchange's real lowering step, unknown for real history: "
                             "'fraction:F' or 'absolute:X' (default: [sim] step_rule)")
    parser.add_argument("--payment", choices=PAYMENTS, default=None,
                        help="what a winner pays (default: [sim] payment)")
    parser.add_argument("--fills", choices=FILLS, default="tick",
                        help="tick (default): a rival raise recorded since our last decision "
                             "preempts us until the next decision takes effect; decision: the "
                             "older model, which decides before filling each tick (our bids "
                             "answer every raise before it costs anything: an upper bound on "
                             "availability), for comparison")
    parser.add_argument("--call-latency", type=float, default=None, metavar="S",
                        help="seconds from a decision to the exchange taking its calls (default "
                             "1: live, a lowering's cooldown runs from when its call returned, "
                             "so lowerings wait for the decision after the cooldown); 0: at the "
                             "decision's time, the model until 2026-12-03")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the reactive rivals (default: [sim] seed)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the results as JSON")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="write a PNG of prices and holdings (needs matplotlib)")
    parser.add_argument("--progress", action="store_true",
                        help="show a progress bar even when stderr is not a terminal")
    parser.add_argument("--replay-diff", action="store_true",
                        help="instead of strategies: replay the period a bot run covered (its "
                             "recorded config, cycle times and starting orders) and show where "
                             "the replay's decisions and costs differ from what the bot did")
    parser.add_argument("--run", type=int, default=None, metavar="ID",
                        help="with --replay-diff: the bot run to replay (default: the newest)")


def parse_time(text: str | None, name: str) -> float | None:
    """ISO 8601 (naive = UTC) or UNIX seconds."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected ISO 8601 (2025-01-31T12:00) or UNIX "
                         "seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _check_output(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    from bidder.backtest.data import HistoryError
    from bidder.backtest.plot import PlotUnavailable
    from bidder.backtest.preflight import PreflightError
    from bidder.backtest.replay_diff import ReplayDiffError
    from storage.errors import StorageError
    from strategies.registry import StrategyError

    try:
        return _replay_diff(args) if args.replay_diff else _run(args)
    except (UsageError, StrategyError, HistoryError, StorageError, PlotUnavailable,
            ReplayDiffError, PreflightError) as err:
        print(f"bidder backtest: {err}", file=sys.stderr)
        return 2


def range_warnings(start: float | None, end: float | None, first: float, last: float,
                   interval: float) -> list[str]:
    """What the history covers against the ``--from``/``--to`` asked for, when it covers less
    (a recording begun later, or pruned, or stopped earlier): a table over a shorter period must
    not pass for the one asked for."""
    out = []
    if start is not None and first > start + interval:
        out.append(f"--from {_iso(start)}: the recording starts at {_iso(first)}; the backtest "
                   "covers only what was recorded")
    if end is not None and last < end - interval:
        out.append(f"--to {_iso(end)}: the recording ends at {_iso(last)}; the backtest covers "
                   "only what was recorded")
    return out


def _run_settings(args: argparse.Namespace, config: Config) -> RunSettings:
    from bidder.backtest.exchange import CALL_LATENCY, ExchangeRules
    from bidder.backtest.reactive import ReactiveSettings
    from bidder.backtest.runner import RunSettings
    from bidder.sim.options import StepRule

    step_rule = args.step_rule or config.sim.step_rule
    try:
        StepRule.parse(step_rule)
    except ValueError as err:
        raise UsageError(f"--step-rule: {err}") from None
    latency = getattr(args, "call_latency", None)
    latency = CALL_LATENCY if latency is None else latency
    if not 0.0 <= latency < config.bot.decide_interval:
        raise UsageError(f"--call-latency {latency:g}: expected seconds from 0 to under "
                         f"[bot] decide_interval ({config.bot.decide_interval:g})")
    exchange = ExchangeRules(step_rule=step_rule, payment=args.payment or config.sim.payment,
                             call_latency=latency)
    return RunSettings(exchange, ReactiveSettings(
        seed=config.sim.seed if args.seed is None else args.seed),
        fills=getattr(args, "fills", "tick"))


def _replay_diff(args: argparse.Namespace) -> int:
    misplaced = [name for name, given in (("--strategy", args.strategy), ("--target", args.target),
                                          ("--from", args.start), ("--to", args.end),
                                          ("--plot", args.plot),
                                          ("--clore-usd", args.clore_usd)) if given]
    if misplaced:
        raise UsageError(f"--replay-diff replays a bot run as it was: {', '.join(misplaced)} "
                         "cannot be used with it")
    from bidder.backtest.replay_diff import as_json as replay_json
    from bidder.backtest.replay_diff import describe, load_run, replay_diff
    from bidder.backtest.report import write_json
    from bidder.config import Config, load_config
    from bidder.logs import setup_logging
    from bidder.status import fmt_time
    from storage.db import open_database

    config = load_config(args.config) if args.config is not None else Config()
    setup_logging(args.log_level, **log_options(args))
    _check_output(args.json, "--json")
    settings = _run_settings(args, config)
    url = args.db or config.storage_url()
    with open_database(url, writer=False) as db, db.sessions() as session:
        recorded = load_run(session, args.run)
        diff = replay_diff(session, recorded, settings)
    print(describe(diff, fmt_time))
    if args.json is not None:
        write_json(args.json, replay_json(diff))
    return 0


def _run(args: argparse.Namespace) -> int:
    from bidder.backtest.data import HistoryError, count_recorded, load_history
    from bidder.backtest.fees import fee_warnings, recorded_creation_fees, with_creation_fees
    from bidder.backtest.grid import ProgressBar, expand_grid, run_backtest
    from bidder.backtest.plot import plot, require_matplotlib
    from bidder.backtest.preflight import preflight
    from bidder.backtest.report import as_json, table, write_json
    from bidder.backtest.runner import MODES
    from bidder.config import Config, load_config
    from bidder.logs import setup_logging
    from bidder.warmup import warm_memories
    from storage.db import open_database

    if not args.strategy:
        raise UsageError("give at least one --strategy (or --replay-diff)")
    if args.run is not None:
        raise UsageError("--run goes with --replay-diff")
    config = load_config(args.config) if args.config is not None else Config()
    setup_logging(args.log_level, **log_options(args))
    if args.plot is not None:
        require_matplotlib()
    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: expected at least 1")
    variants = [v for spec in args.strategy for v in expand_grid(spec)]
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise UsageError(f"a strategy is given twice: {sorted({x for x in labels if labels.count(x) > 1})}")
    targets = _targets(config, args.target)
    start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
    if start is not None and end is not None and start > end:
        raise UsageError(f"--from is after --to ({args.start} > {args.end}): the range is empty")
    settings = _run_settings(args, config)
    exchange = settings.exchange
    modes = MODES if args.mode == "both" else (args.mode,)

    url = args.db or config.storage_url()
    with open_database(url, writer=False) as db, db.sessions() as session:
        snapshots, polls = count_recorded(session)
        if snapshots == 0 and polls == 0:
            raise HistoryError(f"the database at {url} has no GigaSPOT snapshots and no spot polls: "
                               "record some first (bidder record, bidder import)")
        history = load_history(session, targets, allocation=config.markets.gigaspot.allocation,
                               start=start, end=end, grid_interval=config.bot.decide_interval,
                               clore_usd=args.clore_usd)
        config, fees = with_creation_fees(config, targets, recorded_creation_fees(
            session, end=float(history.time[-1])))
        # as a bot started at the range's first tick would: what was recorded before it
        warmed = warm_memories(session, config, [t for t in targets if any(
            getattr(v.instance(t), "uses_memory", False) for v in variants)],
            until=float(history.time[0]))
    targets, warnings = preflight(history, config, targets, command="backtest")
    warnings += [line.removeprefix("warning: ") for line in fee_warnings(fees)]
    warnings += range_warnings(start, end, float(history.time[0]), float(history.time[-1]),
                               config.bot.decide_interval)
    progress = ProgressBar(sys.stderr, force=args.progress)  # the stream of now, not of import
    result = run_backtest(history, config, variants, settings, modes=modes, targets=targets,
                          workers=args.workers, progress=progress, memories=warmed.memories)
    info = _settings(history, exchange, settings, targets, modes)
    info["clore_usd_given"] = args.clore_usd
    info["warnings"] = warnings
    info["creation_fees"] = [asdict(f) for f in fees]
    info["memory_warmup"] = {"ticks": warmed.ticks, "since": warmed.since,
                             "why_empty": warmed.why_empty}
    print(f"{len(targets)} target(s), {history.n_ticks:,} ticks from "
          f"{_iso(history.time[0])} to {_iso(history.time[-1])}; exchange step rule "
          f"{exchange.step_rule}, payment {exchange.payment}; creation fee "
          f"{', '.join(f.describe() for f in fees)}; "
          f"{warmed.describe() + '; ' if warmed.memories else ''}costs in each target's currency")
    banner = "".join(f"WARNING: {w}\n" for w in warnings)
    print(banner + table(result.metrics) + ("\n" + banner.rstrip("\n") if banner else ""))
    if args.json is not None:
        write_json(args.json, as_json(result.metrics, info))
    if args.plot is not None:
        plot(args.plot, result.runs, targets, result.oracles)
    return 0


def _targets(config: Config, names: list[str] | None) -> list[Any]:
    if not config.targets:
        raise UsageError("the config has no [[targets]]: nothing to backtest (give --config)")
    if names is None:
        return list(config.targets)
    known = {t.name: t for t in config.targets}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown target(s) {unknown}; configured: {sorted(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(float(t), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _settings(history: Any, exchange: ExchangeRules, settings: RunSettings, targets: list[Any],
              modes: tuple[str, ...]) -> dict[str, Any]:
    return {"from": float(history.time[0]), "to": float(history.time[-1]),
            "ticks": history.n_ticks, "modes": list(modes),
            "targets": [t.name for t in targets],
            "exchange": {"step_rule": exchange.step_rule, "payment": exchange.payment,
                         "cooldown": exchange.cooldown,
                         "cooldown_from_creation": exchange.cooldown_from_creation,
                         "call_latency": exchange.call_latency,
                         "gigaspot_refusals": exchange.gigaspot_refusals},
            "reactive_seed": settings.reactive.seed, "fills": settings.fills}

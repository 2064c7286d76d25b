"""``bidder optimize``: tune a strategy's parameters with Optuna, one backtest per trial; a study in
a database (``--storage``) is shared by every process, on any machine, that names it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bidder.commands import database_url, usd_per_clore
from bidder.plain import plain

HELP = ("Search a strategy's parameters for the lowest cost per GPU-hour at an availability floor "
        "(Optuna; each trial a backtest); with --storage, many processes and machines share one "
        "study.")
DEFAULT_FLOOR = 0.95
TOP = 5
STUDY_LOCK = 0x0C10BE
"""PostgreSQL advisory lock key held while a process creates or loads the study."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file with the target (default: built-in defaults, "
                             "which have no targets)")
    parser.add_argument("--db", type=database_url, default=None, metavar="PATH|URL",
                        help="the recorded market: a SQLite file or a database URL (default: "
                             "the config's [storage] url or bidder.db)")
    parser.add_argument("--clore-usd", type=usd_per_clore, default=None, metavar="USD",
                        help="USD per CLORE wherever the recording has none (imported CDN files "
                             "carry no rate; host_profit and USD caps and budgets need one)")
    parser.add_argument("--target", required=True, metavar="NAME",
                        help="the configured target to tune for")
    parser.add_argument("--strategy", required=True, metavar="NAME",
                        help="the strategy whose parameters are searched, e.g. outbid")
    parser.add_argument("--space", required=True, metavar="SPEC",
                        help="parameters and their ranges: 'tick=0.01:2.0:log,"
                             "switch_margin=0.0:0.3' (low:high, ':log' for a log scale)")
    parser.add_argument("--trials", type=int, required=True, metavar="N",
                        help="trials this process runs (added to the study's)")
    parser.add_argument("--study", default=None, metavar="NAME",
                        help="study name (default: STRATEGY-TARGET); processes naming the same "
                             "study in the same --storage share its trials")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="database URL Optuna keeps the study in (any SQLAlchemy URL it "
                             "accepts, e.g. the bot's PostgreSQL); default: in memory, this "
                             "process only")
    parser.add_argument("--objective", choices=("cost_per_gpu_hour", "cost", "regret"),
                        default="cost_per_gpu_hour",
                        help="what to minimise among trials that reach --min-availability")
    parser.add_argument("--min-availability", type=float, default=DEFAULT_FLOOR, metavar="X",
                        help="availability floor (0-1): a trial below it ranks after every "
                             "trial that reaches it")
    parser.add_argument("--mode", choices=("replay", "reactive"), default="replay",
                        help="replay: rivals as recorded; reactive: the best rival answers our "
                             "bids")
    parser.add_argument("--holdout", default=None, metavar="PERIOD",
                        help="keep the last PERIOD of the history (6h, 2d, 90m, seconds) out of "
                             "the search and score the top trials on it, beside in-sample")
    parser.add_argument("--from", dest="start", default=None, metavar="T",
                        help="start: ISO 8601 (UTC unless it says otherwise) or UNIX seconds")
    parser.add_argument("--to", dest="end", default=None, metavar="T", help="end, inclusive")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampler seed (default: random; the reactive rivals use [sim] seed)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the study's result as JSON")


class UsageError(ValueError):
    """Bad input: shown as it is, exit code 2, nothing written."""


def run(args: argparse.Namespace) -> int:
    from bidder.backtest.data import HistoryError
    from bidder.backtest.preflight import PreflightError
    from bidder.optimize import SpaceError
    from storage.errors import StorageError
    from strategies.registry import StrategyError

    try:
        return _run(args)
    except (UsageError, SpaceError, StrategyError, HistoryError, StorageError,
            PreflightError) as err:
        print(f"bidder optimize: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from bidder.commands.backtest import _run_settings, parse_time, range_warnings
    from bidder.commands.backtest import UsageError as BacktestUsage
    from bidder.config import Config, load_config
    from bidder.logs import setup_logging
    from bidder.optimize import parse_duration, parse_space, run_conditions, study_setup

    if args.trials < 0:
        raise UsageError(f"--trials {args.trials}: expected 0 or more")
    if not 0.0 <= args.min_availability <= 1.0:
        raise UsageError(f"--min-availability {args.min_availability}: expected 0 to 1")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"--json {args.json}: folder {args.json.parent} does not exist")
    config = load_config(args.config) if args.config is not None else Config()
    setup_logging(args.log_level)
    known = {t.name: t for t in config.targets}
    if args.target not in known:
        raise UsageError(f"unknown target {args.target!r}; configured: {sorted(known)}"
                         if known else "the config has no [[targets]]: nothing to tune "
                                       "(give --config)")
    target = known[args.target]
    base = fixed_params(target, args.strategy)
    dims = parse_space(args.space, args.strategy, base)
    try:
        holdout = parse_duration(args.holdout) if args.holdout is not None else None
        start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
        settings = _run_settings(args_for_settings(args), config)
    except (ValueError, BacktestUsage) as err:
        raise UsageError(f"--holdout {err}" if "duration" in str(err) else str(err)) from None
    optuna = _optuna()
    storage = _storage_url(args.storage)  # a bad URL is refused before the history loads
    config, in_sample, held_out, fees = _load(args, config, target, start, end, holdout)
    target = {t.name: t for t in config.targets}[target.name]
    warnings = _preflight(config, target, in_sample, held_out, fees)  # before any study exists
    covered = held_out if held_out is not None else in_sample
    warnings += range_warnings(start, end, float(in_sample.time[0]), float(covered.time[-1]),
                               config.bot.decide_interval)
    memories, warmed = _warm(args, config, target, in_sample, held_out) \
        if _uses_memory(args.strategy, base, dims) else (({}, {}), None)
    setup = study_setup(args.strategy, target.name, args.mode, args.objective,
                        args.min_availability, dims, holdout, start, end,
                        clore_usd=args.clore_usd, base=base,
                        conditions=run_conditions(config, target, settings, args.mode, in_sample,
                                                  held_out, warmed))
    study = _study(optuna, args, setup, storage)
    from bidder.optimize import Scorer, trial_objective

    scorer = Scorer(in_sample, config, target, args.strategy, settings, args.mode, base,
                    memories=memories[0])
    study.optimize(trial_objective(scorer, dims, args.objective, args.min_availability,
                                   _report), n_trials=args.trials)
    return _finish(optuna, study, args, setup, config, target, settings, held_out, warnings,
                   base, memories[1])


def fixed_params(target: Any, strategy: str) -> dict[str, Any]:
    """The parameters every trial holds (``--space`` overrides them): the target's
    ``strategy_params`` when it is configured with the strategy searched, else none (they are
    another strategy's)."""
    return dict(target.strategy_params) if target.strategy == strategy else {}


def args_for_settings(args: argparse.Namespace) -> argparse.Namespace:
    """What ``bidder backtest``'s settings read: the config's exchange rules and sim seed."""
    return argparse.Namespace(step_rule=None, payment=None, seed=None)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("bidder optimize needs Optuna: pip install 'clore-bidder[optimize]'") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _preflight(config: Any, target: Any, in_sample: Any, held_out: Any, fees: Any) -> list[str]:
    """``bidder backtest``'s checks (``bidder.backtest.preflight``) on the history searched and
    the holdout: a rate the target's rules need and a period lacks entirely, or a target no
    server matched, stops here (``PreflightError``); the warnings to show with the results."""
    from bidder.backtest.fees import fee_warnings
    from bidder.backtest.preflight import PreflightError, preflight

    _, warnings = preflight(in_sample, config, [target], command="optimize")
    if held_out is not None:
        try:
            _, held = preflight(held_out, config, [target], command="optimize")
        except PreflightError as err:
            raise PreflightError(f"in the --holdout period, {err}") from None
        warnings += [f"in the --holdout period, {w}" for w in held]
    return warnings + [line.removeprefix("warning: ") for line in fee_warnings(fees)]


def _uses_memory(strategy: str, base: dict[str, Any], dims: Any) -> bool:
    """Whether a trial's strategy may look at market memory: at the middle of the space, or
    with one of the parameters that turn it on searched."""
    from strategies.registry import load_strategy

    if any(d.name in ("contested_at", "contest_penalty") for d in dims):
        return True
    middle = load_strategy(strategy, {**base, **{d.name: d.middle() for d in dims}})
    return bool(getattr(middle, "uses_memory", False))


def _load(args: argparse.Namespace, config: Any, target: Any, start: float | None,
          end: float | None, holdout: float | None) -> tuple[Any, Any, Any, Any]:
    """The config with the creation fee a backtest charges (the recorded one, as ``bidder
    backtest`` does), the in-sample history and, with ``--holdout``, the held-out one after it,
    and the creation fees charged. ``--clore-usd`` fills the ticks without a recorded rate."""
    from bidder.backtest.data import HistoryError, count_recorded, load_history
    from bidder.backtest.fees import recorded_creation_fees, with_creation_fees
    from storage.db import open_database, shown_url

    url = args.db or config.storage_url()
    allocation = config.markets.gigaspot.allocation
    interval = config.bot.decide_interval
    with open_database(url, writer=False) as db, db.sessions() as session:
        snapshots, polls = count_recorded(session)
        if snapshots == 0 and polls == 0:
            raise HistoryError(f"the database at {shown_url(url)} has no GigaSPOT snapshots and no "
                               "spot polls: record some first (bidder record, bidder import)")
        whole = load_history(session, [target], allocation=allocation, start=start, end=end,
                             grid_interval=interval, clore_usd=args.clore_usd)
        config, fees = with_creation_fees(config, [target], recorded_creation_fees(
            session, end=float(whole.time[-1])))
        if holdout is None:
            return config, whole, None, fees
        first, last = float(whole.time[0]), float(whole.time[-1])
        split = last - holdout
        if split <= first:
            raise UsageError(f"--holdout {args.holdout} covers the whole history "
                             f"({(last - first) / 3600:.1f} h): nothing is left to search on")
        del whole
        in_sample = load_history(session, [target], allocation=allocation, start=first,
                                 end=split, grid_interval=interval, clore_usd=args.clore_usd)
        held_out = load_history(session, [target], allocation=allocation, start=split,
                                end=last, grid_interval=interval, clore_usd=args.clore_usd)
    return config, in_sample, held_out, fees


def _warm(args: argparse.Namespace, config: Any, target: Any, in_sample: Any, held_out: Any
          ) -> tuple[tuple[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """The target's market memory as a bot started at each history's first tick would have it
    (``bidder.warmup``: what was recorded before it), said on stderr with the trials; and what
    warmed the in-sample runs' memory (ticks, first tick), for the study's setup: trials that
    start from another memory do not compare."""
    from bidder.warmup import warm_memories
    from storage.db import open_database

    parts = [("in-sample runs" if held_out is not None else "runs", in_sample)]
    if held_out is not None:
        parts.append(("held-out runs", held_out))
    memories, found = [], []
    with open_database(args.db or config.storage_url(), writer=False) as db, \
            db.sessions() as session:
        for runs, history in parts:
            warmed = warm_memories(session, config, [target], until=float(history.time[0]))
            print(f"{runs}: {warmed.describe()}", file=sys.stderr)
            memories.append(warmed.memories)
            found.append(warmed)
    return ((memories[0], memories[1] if held_out is not None else {}),
            {"warmed_ticks": found[0].ticks, "since": found[0].since})


def _study(optuna: Any, args: argparse.Namespace, setup: dict[str, Any],
           storage: str | None) -> Any:
    """The study in ``storage`` (``_storage_url``: the URL to open, password and all), created
    or loaded, whose setup is ``setup``: a study started with another is refused. Its setup is
    read and written under the creation lock (PostgreSQL), so of two processes starting a new
    study together with different settings, the second is refused; on SQLite storage (one
    machine) that check is not atomic."""
    from bidder.optimize import setup_refusal
    from storage.db import shown_url

    name = args.study or f"{args.strategy}-{args.target}"
    sampler = optuna.samplers.TPESampler(seed=args.seed)
    try:
        with _creation_lock(storage):
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        direction="minimize", load_if_exists=True)
            found = study.user_attrs.get("setup")
            if found is None:
                study.set_user_attr("setup", setup)
    except ImportError as err:
        raise UsageError(f"--storage {shown_url(args.storage)}: a database driver is missing "
                         f"({err})") from None
    except Exception as err:  # Optuna's storage errors name no common base: say what failed
        raise UsageError(f"--storage {shown_url(args.storage or '')}: cannot open the study "
                         f"{name!r}: {str(err).splitlines()[0]}") from None
    refusal = setup_refusal(name, found, setup) if found is not None else None
    if refusal is not None:
        raise UsageError(refusal)
    return study


def _storage_url(url: str | None) -> str | None:
    """``--storage`` as the bot's own engines open it (``storage.db.engine_url``): a
    ``postgresql://`` URL through psycopg 3, ``~`` expanded in a SQLite path."""
    from storage.db import engine_url
    from storage.errors import StorageError

    if url is None:
        return None
    try:
        return engine_url(url).render_as_string(hide_password=False)
    except StorageError as err:
        raise UsageError(f"--storage {err}") from None


@contextmanager
def _creation_lock(url: str | None) -> Iterator[None]:
    """On PostgreSQL, one process at a time creates Optuna's tables and the study and reads or
    writes its setup: two processes starting together would otherwise both issue the CREATE
    TABLEs (and one fails), or both find no setup and write their own."""
    if url is None or not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STUDY_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STUDY_LOCK})
                connection.commit()
    finally:
        engine.dispose()


def _report(number: int, params: dict[str, Any], metrics: dict[str, Any], value: float) -> None:
    from bidder.optimize import INFEASIBLE

    shown = ", ".join(f"{k}={_num(v)}" for k, v in params.items())
    cost = metrics.get("cost_per_gpu_hour")
    print(f"trial {number}: {shown} -> cost/GPU-h {_num(cost)}, availability "
          f"{_pct(metrics.get('availability'))}{'' if value < INFEASIBLE else ' (below floor)'}",
          file=sys.stderr)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def _finish(optuna: Any, study: Any, args: argparse.Namespace, setup: dict[str, Any],
            config: Any, target: Any, settings: Any, held_out: Any, warnings: list[str],
            base: dict[str, Any], held_out_memories: dict[str, Any]) -> int:
    from bidder.backtest.report import write_json
    from bidder.optimize import Scorer

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UsageError(f"study {study.study_name!r} has no finished trial yet (give --trials)")
    ranked = sorted(done, key=lambda t: (t.value, t.number))
    top = ranked[:TOP]
    holdout_scorer = (Scorer(held_out, config, target, args.strategy, settings, args.mode, base,
                             memories=held_out_memories)
                      if held_out is not None else None)
    rows = []
    for t in top:
        row = {"trial": t.number, "params": dict(t.params), "value": t.value,
               "feasible": bool(t.user_attrs.get("feasible")),
               "worker": t.user_attrs.get("worker"),
               "in_sample": {k: t.user_attrs.get(k) for k in
                             ("cost", "cost_per_gpu_hour", "availability", "gpu_hours",
                              "regret", "gaps", "preemptions", "api_calls")}}
        if holdout_scorer is not None:
            metrics = holdout_scorer.score(dict(t.params))
            row["holdout"] = {k: plain(metrics.get(k)) for k in row["in_sample"]}
        rows.append(row)
    best = rows[0]
    feasible = best["feasible"]
    print(f"study {study.study_name!r}: {len(done)} finished trial(s) "
          f"({args.trials} by this process); objective {args.objective} at availability >= "
          f"{args.min_availability:.0%}, {args.mode} mode")
    banner = "".join(f"WARNING: {w}\n" for w in warnings)
    print(banner + _table(rows, holdout_scorer is not None)
          + ("\n" + banner.rstrip("\n") if banner else ""))
    if not feasible:
        print(f"WARNING: no trial reached availability {args.min_availability:.0%}; the best "
              "shown falls short (widen --space, lower --min-availability or raise the target's "
              "price cap)", file=sys.stderr)
    if args.json is not None:
        write_json(args.json, {
            "study": study.study_name, "storage": _shown(args.storage),
            "setup": setup, "trials_in_study": len(done), "trials_this_process": args.trials,
            "best": {"trial": best["trial"], "params": best["params"], "value": best["value"],
                     "feasible": feasible, "metrics": best["in_sample"],
                     "holdout": best.get("holdout")},
            "top": rows,
            "warning": None if feasible else "no trial reached the availability floor",
            "warnings": warnings, "clore_usd_given": args.clore_usd,
        })
    return 0


def _shown(url: str | None) -> str | None:
    from storage.db import shown_url

    return shown_url(url) if url else None


def _table(rows: list[dict[str, Any]], with_holdout: bool) -> str:
    header = ["trial", "params", "cost/GPU-h", "avail", "cost"]
    if with_holdout:
        header += ["holdout cost/GPU-h", "holdout avail", "holdout cost"]
    lines = []
    for r in rows:
        params = ",".join(f"{k}={_num(v)}" for k, v in r["params"].items())
        i = r["in_sample"]
        cells = [str(r["trial"]) + ("" if r["feasible"] else "*"), params,
                 _num(i["cost_per_gpu_hour"]), _pct(i["availability"]), _num(i["cost"])]
        if with_holdout:
            h = r["holdout"]
            cells += [_num(h["cost_per_gpu_hour"]), _pct(h["availability"]), _num(h["cost"])]
        lines.append(cells)
    widths = [max(len(c[k]) for c in [header, *lines]) for k in range(len(header))]
    out = ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in
                     enumerate(zip(header, widths)))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in
                      enumerate(zip(cells, widths))) for cells in lines]
    if any(not r["feasible"] for r in rows):
        out.append("* below the availability floor")
    return "\n".join(out)

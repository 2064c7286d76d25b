"""``bidder run``: hold the configured targets until Ctrl-C or SIGTERM (``--sim``: on the built-in
simulated market, in accelerated time, no key needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bidder.commands import positive_seconds, strategy_problem
from bidder.logs import log_options

if TYPE_CHECKING:
    from pydantic import SecretStr

    from bidder.config import Config, Mode
    from storage.db import Database

HELP = ("Run the bot: hold the configured targets at the lowest price the market allows, until "
        "Ctrl-C or SIGTERM. --sim runs it against the built-in simulated market (no key needed).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML config file (required unless --sim; see config.example.toml)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="decide and record on the live market, but send no order, price change "
                           "or cancel (separate database: bidder-dry-run.db)")
    mode.add_argument("--sim", action="store_true",
                      help="run against the built-in simulated market in accelerated time "
                           "([sim] in the config; without --config the built-in demo); database "
                           "bidder-sim.db, started afresh")
    parser.add_argument("--duration", type=positive_seconds, default=None, metavar="S",
                        help="stop after S real seconds (default: run until Ctrl-C or SIGTERM)")


def demo_config() -> Config:
    """The built-in ``bidder/demo.toml``."""
    import importlib.resources
    import tomllib

    from bidder.config import parse_config

    text = importlib.resources.files("bidder").joinpath("demo.toml").read_text(encoding="utf-8")
    return parse_config(tomllib.loads(text), "the built-in demo config (bidder/demo.toml)")


def logged_key(config: Config, command: str, log_level: str,
               **log_options: object) -> SecretStr | None:
    """Set up logging with the API key redacted, and return the key; without one, say so on
    stderr and return None."""
    from bidder.logs import setup_logging

    key = config.api.resolved_key()
    setup_logging(log_level, [key.get_secret_value()] if key else [],
                  **log_options)  # type: ignore[arg-type]
    if key is None:
        print(f"bidder {command}: no API key: set CLORE_API_KEY or [api] key in the config",
              file=sys.stderr)
    return key


def _fresh_sim_database(url: str, config: Config) -> None:
    """The default simulation database is started afresh: each run is a new simulated market;
    but never under a simulated bot that is still running on it (``LeaseHeld``)."""
    from bidder.clock import SystemClock
    from bidder.lease import Lease
    from storage.db import open_database, sqlite_path
    from storage.errors import StorageError

    path = sqlite_path(url)
    if path is None:
        return
    if Path(path).exists():
        try:
            database = open_database(url, writer=False)
        except StorageError:  # an older or unreadable sim database: nothing runs on it
            database = None
        if database is not None:
            with database, database.sessions() as session:
                Lease(database.sessions, SystemClock(),
                      stale_after=config.bot.lease_stale_after).check(session)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from bidder.config import load_config
    from bidder.lease import LeaseHeld
    from bidder.sim.connect import sim_config
    from storage.db import open_database
    from storage.errors import StorageError

    mode: Mode = "sim" if args.sim else "dry-run" if args.dry_run else "live"
    if args.config is None and mode != "sim":
        print("bidder run: --config is required (or --sim for the simulated market)",
              file=sys.stderr)
        return 2
    config = load_config(args.config) if args.config is not None else demo_config()
    if mode == "sim":
        config = sim_config(config)
    if logged_key(config, "run", args.log_level, **log_options(args)) is None:
        return 2
    if not config.targets:
        print("bidder run: the config has no [[targets]]: nothing to hold", file=sys.stderr)
        return 2
    problem = strategy_problem(config.targets)
    if problem is not None:
        print(f"bidder run: {problem}", file=sys.stderr)
        return 2
    url = config.storage_url(mode)
    if mode == "sim" and not config.storage.url:
        try:
            _fresh_sim_database(url, config)
        except LeaseHeld as err:
            print(f"bidder run: {err}; its simulation database is kept", file=sys.stderr)
            return 2
    try:
        database = open_database(url, writer=True)
    except StorageError as err:
        print(f"bidder run: {err}", file=sys.stderr)
        return 2
    with database:
        return _run(config, database, mode, args.duration)


def _run(config: Config, database: Database, mode: Mode, duration: float | None) -> int:
    from bidder.bot import Bot
    from bidder.clock import Clock, ScaledClock, SystemClock
    from bidder.lease import LeaseHeld
    from bidder.scheduler import run_jobs
    from bidder.sim.connect import sim_market

    speed = config.sim.speed if mode == "sim" else 1.0
    clock: Clock = ScaledClock(speed) if mode == "sim" else SystemClock()
    transport = sim_market(config, clock).transport() if mode == "sim" else None
    try:
        bot = Bot(config, database, mode=mode, clock=clock, speed=speed,
                  transport=transport, cdn_transport=transport,
                  state_dir=None if mode == "sim" else config.resolved_data_dir())
    except LeaseHeld as err:
        print(f"bidder run: {err}", file=sys.stderr)
        return 2
    signals: list[str] = []
    try:
        bot.start()
        run_jobs(bot.jobs(), speed=speed, duration=duration,
                 misfire_grace_time=config.bot.misfire_grace_time, stop=bot.stop,
                 on_signal=signals.append)
    except BaseException as err:
        bot.oversight.stopped(f"an error: {type(err).__name__}: {' '.join(str(err).split())}")
        bot.close(alert_timeout=config.alerts.timeout + 1.0)
        raise
    bot.finish("halted by cancel-all" if bot.halted() else f"{signals[0]} received" if signals
               else f"ran for {duration:g} s as asked" if duration is not None else "stopped")
    if mode == "sim":
        print("see what it holds: bidder status --sim", file=sys.stderr)
    return 0

"""``bidder record``: record the market into the database without bidding."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bidder.commands import positive_seconds
from bidder.logs import log_options

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

HELP = ("Record the market without bidding: GigaSPOT snapshots, spot order books and marketplace "
        "listings, into the database, until Ctrl-C or SIGTERM (or for --duration seconds).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.HelpFormatter  # the defaults are told in words below
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="TOML config file (default: built-in defaults). Uses [api] (the key, "
                             "or CLORE_API_KEY), [storage] url (else bidder.db in the data "
                             "directory), [poller] intervals and the spot [[targets]], whose "
                             "matching servers are the ones polled; with no spot target, every "
                             "listed spot server is polled in turn")
    parser.add_argument("--duration", type=positive_seconds, default=None, metavar="SECONDS",
                        help="stop after this many real seconds (default: run until Ctrl-C or "
                             "SIGTERM)")
    parser.add_argument("--sim", action="store_true",
                        help="record the built-in simulated market ([sim] settings, sped up "
                             "[sim] speed times) instead of Clore.ai; needs no API key; the "
                             "database is bidder-sim.db in the data directory unless [storage] url "
                             "is set")


def _counts_since(sessions: sessionmaker[Session], since: float) -> list[int]:
    """GigaSPOT snapshots, spot polls and marketplace listings recorded from ``since`` on."""
    from sqlalchemy import func, select

    from storage.models import GigaspotSnapshot, MarketplaceListing, SpotPoll

    columns = (GigaspotSnapshot.fetched_at, SpotPoll.polled_at, MarketplaceListing.taken_at)
    with sessions() as session:
        return [session.scalar(select(func.count()).where(column >= since)) or 0
                for column in columns]


def run(args: argparse.Namespace) -> int:
    from bidder.api import CloreClient
    from bidder.clock import Clock, ScaledClock, SystemClock
    from bidder.config import Config, load_config
    from bidder.logs import setup_logging
    from bidder.poller import MarketPoller
    from bidder.scheduler import JobSpec, run_jobs
    from bidder.sim.connect import sim_client, sim_config, sim_market
    from storage.db import open_database, shown_url
    from storage.errors import StorageError

    config = load_config(args.config) if args.config is not None else Config()
    key = config.api.resolved_key()
    setup_logging(args.log_level, [key.get_secret_value()] if key else [], **log_options(args))
    clock: Clock
    if args.sim:
        clock = ScaledClock(config.sim.speed)
        config = sim_config(config)
        client = sim_client(config, sim_market(config, clock))
        url = config.storage_url("sim")
        speed, source = config.sim.speed, f"the simulated market ({config.sim.speed:g}x speed)"
    else:
        if key is None:
            print("bidder record: no API key: set CLORE_API_KEY or [api] key in the config, "
                  "or record the simulated market with --sim", file=sys.stderr)
            return 2
        clock = SystemClock()
        try:
            client = CloreClient.from_config(config.api, clock=clock,
                                             state_dir=config.resolved_data_dir())
        except ValueError as err:
            print(f"bidder record: {err}", file=sys.stderr)
            return 2
        url = config.storage_url()
        speed, source = 1.0, config.api.base_url
    try:
        database = open_database(url, writer=True)
    except StorageError as err:
        client.close()
        print(f"bidder record: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    with client, database:
        poller = MarketPoller(client, database.sessions, clock, config, stop=stop,
                              watch_all_spot=not any(t.market == "spot" for t in config.targets))
        poll = config.poller
        jobs = [JobSpec("gigaspot", poller.poll_gigaspot, poll.gigaspot_interval),
                JobSpec("spot", poller.poll_spot_round, poll.spot_interval),
                JobSpec("marketplace", poller.poll_marketplace, poll.marketplace_interval)]
        print(f"bidder record: recording {source} into {shown_url(url)}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        started = clock.now()
        status = run_jobs(jobs, speed=speed, duration=args.duration,
                          misfire_grace_time=config.bot.misfire_grace_time, stop=stop)
        snapshots, polls, listings = _counts_since(database.sessions, started)
    print(f"bidder record: recorded into {shown_url(url)}: GigaSPOT snapshots {snapshots}, "
          f"spot polls {polls}, marketplace listings {listings}")
    return status

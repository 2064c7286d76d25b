"""`bidder sim`: serve the simulated Clore market on loopback until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bidder.sim.market import SimMarket

HELP = ("Serve a simulated Clore market (spot and GigaSPOT, with competitors) on loopback; "
        "prints its base URL and runs until Ctrl-C or SIGTERM.")


def _step_rule(text: str) -> str:
    from bidder.sim.options import StepRule

    try:
        StepRule.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bidder.allocation import RULES
    from bidder.sim.options import PAYMENTS, SimOptions

    defaults = SimOptions()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765,
                        help="port to listen on (0: any free port)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="random seed: the same seed and requests give the same market")
    parser.add_argument("--api-key", default=None,
                        help="accept only this API key; without it every non-empty key is "
                             "accepted, each its own user")
    parser.add_argument("--speed", type=_positive, default=1.0,
                        help="simulated seconds per real second (the market's clock runs this "
                             "much faster)")
    parser.add_argument("--spot-servers", type=_count, default=defaults.spot_servers,
                        help="number of spot-market servers")
    parser.add_argument("--gigaspot-machines", type=_count, default=defaults.gigaspot_machines,
                        help="number of GigaSPOT machines")
    parser.add_argument("--step-rule", type=_step_rule, default=defaults.step_rule,
                        help="how far one price lowering may go: 'fraction:F' (to price x (1-F)) "
                             "or 'absolute:X' (to price - X)")
    parser.add_argument("--allocation", choices=RULES, default=defaults.allocation,
                        help="who wins a GigaSPOT machine: the highest price, or the bid most "
                             "profitable for the host (price x CLORE price - power cost)")
    parser.add_argument("--payment", choices=PAYMENTS, default=defaults.payment,
                        help="what a winning order pays: its own price, or the lowest price that "
                             "would still have won (at least the floor)")
    parser.add_argument("--faults", type=_fraction, default=0.0, metavar="RATE",
                        help="answer this fraction of requests (0..1) with an injected fault: HTTP "
                             "500, 502 with HTML, hangs past the client timeout, invalid JSON, "
                             "code 1, HTTP 429 with Retry-After, executed calls whose reply is "
                             "lost, truncated or invalid snapshots")
    parser.add_argument("--check-db", default=None, metavar="URL",
                        help="on exit, print the invariant report against the bot's database at "
                             "this SQLAlchemy URL (our open orders here and there, bids per "
                             "server, code-5 replies, step and 600-s refusals); exit 1 if broken")
    parser.add_argument("--quiet-market", action="store_true",
                        help="no competitors and no outages, rentals or CLORE price drift: nothing "
                             "moves unless you move it")


def run(args: argparse.Namespace) -> int:
    from bidder.clock import ScaledClock
    from bidder.sim.market import SimMarket
    from bidder.sim.options import SimOptions
    from bidder.sim.server import serve

    options = SimOptions(
        seed=args.seed, api_key=args.api_key, spot_servers=args.spot_servers,
        gigaspot_machines=args.gigaspot_machines, step_rule=args.step_rule,
        allocation=args.allocation, payment=args.payment,
        agents=not args.quiet_market, world_events=not args.quiet_market, faults=args.faults,
    )
    market = SimMarket(options, ScaledClock(args.speed))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server = serve(market, args.host, args.port)
        except OSError as err:
            print(f"bidder sim: cannot listen on {args.host}:{args.port}: {err.strerror}",
                  file=sys.stderr)
            return 1
        print(server.url, flush=True)
        print(f"bidder sim: seed {args.seed}, speed {args.speed:g}x, {args.spot_servers} spot "
              f"servers, {args.gigaspot_machines} GigaSPOT machines; Ctrl-C stops",
              file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        server.shutdown()
        return _report(market, args.check_db)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(market: SimMarket, db_url: str | None) -> int:
    """Print the invariant report (against the bot's database with ``--check-db``); 1 if an
    invariant is broken."""
    from bidder.sim.invariants import invariant_report
    from storage.db import open_database
    from storage.errors import StorageError

    if db_url is None:
        report = invariant_report(market, None)
    else:
        try:
            database = open_database(db_url, writer=False)
        except StorageError as err:
            print(f"bidder sim: {err}", file=sys.stderr)
            return 2
        with database:
            report = invariant_report(market, database)
    print(report.text(), flush=True)
    return 0 if report.ok else 1


"""The bidding edge: what the built-in strategies pay against the whole-server oracle, a
NiceHashBot-style baseline and a static bid at the cap, on the project's own synthetic markets.

    python benchmarks/bench_bidding.py [--days 2] [--servers 80] [--seed 11] [--workers N]

Two GigaSPOT markets, generated here from a seed (no recording needed):

- **quiet**: static rivals on about half the servers, repricing every few hours, a daily cycle
  (prices 25 % higher in the evening than at night) and outages (servers offline for 30-120
  minutes, about 2 % of the time);
- **war**: the same plus NiceHashBot-style ratchet bots where winning is cheap, as a real market
  has them: on every server of the cheapest third per GPU, and on a random sixth of the others.
  Each jumps back up (about once in 50 minutes: someone beat it) and otherwise steps down 10 %
  every 10 minutes to the floor, so its recorded price is a saw; in reactive mode the best rival
  of a server we take also answers us. The cheap servers are contested, the free ones dearer.

For GPU targets of 8 and 16 (1-, 2-, 4- and 8-GPU servers) it runs, in replay and reactive mode:
``outbid`` (the default, with market memory), ``outbid`` without it (``NO_MEMORY``), the
baseline (``NiceHashBot`` below: a plugin, not a built-in) and ``fixed`` at the cap. It prints,
per market, target and mode, the "Done means" figures of issue 11:

- outbid's cost per GPU-hour over the whole-server oracle's (<= 1.02 replay, <= 1.05 reactive),
  and without market memory (``no-memory/whole``); in the war market also over the whole-server
  oracle of the servers no bot bids on (``outbid/no-bots``: the same market with those servers
  offline), which tells the part of the gap that is the saws' troughs from the part a strategy
  could still win;
- outbid's availability against the baseline's (>=) and its cost per GPU-hour (<=), with and
  without market memory (``cost/nhb``, ``no-memory/nhb``), and per GPU-hour of the count asked
  for (``asked cost/nhb``: the baseline overshoots the count with cheap servers, ``surplus nhb
  %``, and GPUs nobody asked for make its cost per GPU-hour look lower);
- outbid's cost per GPU-hour over the static bid's in the quiet market (<= 0.70);
- surplus GPU-hours as a share of held GPU-hours (<= 1 %), and rebuys within an hour (0).

Then a restart table: in the war market, ``outbid`` started at several points (``RESTARTS``) for
a few hours (``--restart-hours``), its market memory warmed from the market before the start, as
the bot does (``bidder.warmup``), or empty, as it did until 2026-12-03: availability (the first
minute of each run is a gap either way), cost per GPU-hour (creation fees included) and orders.

Backtest speed is ``bench_backtest.py``'s. Figures, not timings: the same seed gives the same table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bidder.backtest.data import FLOOR, History, MarketHistory, WinVersions
from bidder.backtest.events import EventStream
from bidder.backtest.grid import expand_grid, run_backtest
from bidder.backtest.runner import RunSettings, Variant
from bidder.config import CLORE, Config, parse_config
from bidder.memory import MarketMemory
from bidder.warmup import observe_history
from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView

T0 = 1_735_000_000.0
STEP = 60.0
DAY = 86_400.0
CAP = 12.0
"""The targets' cap per GPU-day (CLORE)."""
SIZES = (1, 2, 4, 8)


# --- the baseline ---------------------------------------------------------------------------------


class NiceHashBot(Strategy):
    """NiceHashBot's pattern as a plugin: take the servers cheapest per GPU to win, one by one,
    until the count is met (greedy, overshooting with the next server when it must); on a held
    server raise to the best rival plus ``tick`` when outbid, else step down ``decrease`` of the
    price whenever the exchange allows, to the floor. It keeps a server while it is under the cap."""

    name = "nicehashbot"

    class Params(base.Params):
        tick: float = 0.01
        decrease: float = 0.1

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid] | None:
        c = view.candidates
        want = np.maximum(c.floor, c.threshold + self.params.tick)
        ok = c.eligible & (want <= c.cap)
        out: list[DesiredBid] = []
        have = 0
        for o in view.orders:
            row = c.row(o.server_id)
            if row is None or not ok[row]:
                continue
            if o.state == "outbid" or o.price <= c.threshold[row]:
                price = float(want[row])
            else:
                price = max(float(c.floor[row]), float(c.threshold[row]) + self.params.tick,
                            o.price * (1.0 - self.params.decrease)) \
                    if view.now >= o.next_lower_at else o.price
            out.append(DesiredBid(o.server_id, price))
            have += int(c.gpus[row])
        taken = {b.server_id for b in out}
        per_gpu = np.where(ok, want / np.maximum(c.gpus, 1), np.inf)
        for row in np.argsort(per_gpu, kind="stable").tolist():
            if have >= view.target.count or not np.isfinite(per_gpu[row]):
                break
            sid = int(c.server_id[row])
            if sid not in taken:
                out.append(DesiredBid(sid, float(want[row])))
                have += int(c.gpus[row])
        return out


# --- the markets ----------------------------------------------------------------------------------


def market(kind: str, *, days: float, servers: int, seed: int,
           without_bots: bool = False, ticks: slice = slice(None)) -> History:
    """A seeded GigaSPOT market of ``servers`` servers over ``days``, one tick a minute.

    ``without_bots``: the same war market with every server a ratchet bot bids on offline
    throughout (the servers nobody fights over): its oracle is what holding capacity costs
    when one never rides a saw's troughs. ``ticks``: only those ticks of it (a run that starts
    and ends there)."""
    rng = np.random.default_rng([seed, 0 if kind == "quiet" else 1])
    n_ticks = int(days * DAY / STEP) + 1
    time = T0 + STEP * np.arange(n_ticks)
    gpus = rng.choice(SIZES, servers, p=(0.2, 0.3, 0.3, 0.2)).astype(np.int32)
    floor_per_gpu = rng.uniform(2.0, 4.0, servers)
    # the daily cycle moves the rivals (night low, evening high); floors change once a day
    cycle = 1.0 + 0.125 * np.sin(2 * np.pi * (time - T0) / DAY - np.pi / 2)
    daily = rng.uniform(0.95, 1.05, (int(days) + 2, servers))[((time - T0) // DAY).astype(int)]
    floor = daily * (floor_per_gpu * gpus)
    online = np.ones((n_ticks, servers), dtype=bool)
    for i in range(servers):  # outages: about 2 % of the time, 30-120 minutes each
        for _ in range(rng.poisson(0.3 * days)):
            start = int(rng.integers(0, n_ticks))
            online[start:start + int(rng.integers(30, 121)), i] = False
    rival = np.full((n_ticks, servers), np.nan)
    static = rng.random(servers) < 0.5
    for i in np.flatnonzero(static):  # static rivals repricing every few hours
        t = 0
        while t < n_ticks:
            span = int(rng.integers(120, 480))
            rival[t:t + span, i] = floor[t, i] * cycle[t] * rng.uniform(1.05, 1.6)
            t += span
    if kind == "war":
        # bots go where winning is cheap: every server of the cheapest third per GPU has one,
        # and so has a random sixth of the others
        by_price = np.argsort(floor_per_gpu, kind="stable")
        cheap, rest = by_price[:servers // 3], by_price[servers // 3:]
        ratchets = np.concatenate([cheap, rng.choice(rest, servers // 6, replace=False)])
        for i in ratchets.tolist():  # a saw: raised by someone, then down 10 % every 10 minutes
            price, t = np.nan, 0
            top = floor_per_gpu[i] * gpus[i] * rng.uniform(1.8, 2.6)
            while t < n_ticks:  # the bot reprices only when raised and at its steps
                if np.isnan(price) or rng.random() < 0.02:
                    price = top * cycle[t] * rng.uniform(0.8, 1.0)
                rival[t, i] = max(price, floor[t, i])
                if t % 10 == 0:
                    price *= 0.9
                t += 1
        if without_bots:
            online[:, ratchets] = False
    return _history(time[ticks], gpus, floor[ticks], online[ticks], rival[ticks])


def _stream(dense: dict[str, np.ndarray], initial: dict[str, np.ndarray]) -> EventStream:
    n_ticks = len(next(iter(dense.values())))
    changed = np.zeros(next(iter(dense.values())).shape, dtype=bool)
    for name, values in dense.items():
        before = np.vstack([initial[name][None, :], values[:-1]])
        same = values == before
        if values.dtype.kind == "f":
            same |= np.isnan(values) & np.isnan(before)
        changed |= ~same
    tick, row = np.nonzero(changed)
    return EventStream.build(n_ticks, tick, row, {c: v[tick, row] for c, v in dense.items()},
                             initial)


def _history(time: np.ndarray, gpus: np.ndarray, floor: np.ndarray, online: np.ndarray,
             rival: np.ndarray) -> History:
    n_ticks, n = rival.shape
    shape = (n_ticks, n)
    facts = _stream({"gpus": np.broadcast_to(gpus, shape).copy(),
                     "gpu_model": np.full(shape, "RTX 4090", dtype=object),
                     "country": np.full(shape, "DE", dtype=object),
                     "pl_min": np.full(shape, 100.0), "pl_max": np.full(shape, 450.0)},
                    {"gpus": np.zeros(n, np.int32), "gpu_model": np.full(n, "", dtype=object),
                     "country": np.full(n, "", dtype=object), "pl_min": np.full(n, np.nan),
                     "pl_max": np.full(n, np.nan)})
    state = _stream({"online": online, "rentable": online.copy(),
                     "working_properly": np.ones(shape, bool),
                     "reliability": np.full(shape, 0.99), "energy_price": np.full(shape, 0.1),
                     f"{FLOOR}{CLORE}": np.round(floor, 4)},
                    {"online": np.zeros(n, bool), "rentable": np.zeros(n, bool),
                     "working_properly": np.zeros(n, bool), "reliability": np.full(n, np.nan),
                     "energy_price": np.full(n, np.nan), f"{FLOOR}{CLORE}": np.full(n, np.nan)})
    rival = np.round(rival, 4)
    bid_id = np.full(shape, -1, dtype=np.int64)
    birth = np.zeros(shape, dtype=np.int64)
    present = ~np.isnan(rival)
    new = present & ~np.vstack([np.zeros((1, n), bool), present[:-1]])
    new |= present & np.vstack([np.zeros((1, n), bool), rival[1:] != rival[:-1]])
    ids = np.cumsum(new.ravel()).reshape(shape) + 1000
    for i in range(n):  # a bid keeps its id while its price stays; a new price is a new bid
        bid_id[:, i] = np.where(present[:, i], ids[:, i], -1)
        starts = np.where(new[:, i], np.arange(n_ticks), 0)
        birth[:, i] = np.maximum.accumulate(starts)
    cap_hint = np.where(present, np.nanmax(np.where(present, rival, -np.inf), axis=0), np.nan)
    rivals = _stream({"price": rival, "pl": np.where(present, 200.0, np.nan), "bid_id": bid_id,
                      "birth": birth, "cap_hint": cap_hint},
                     {"price": np.full(n, np.nan), "pl": np.full(n, np.nan),
                      "bid_id": np.full(n, -1, np.int64), "birth": np.zeros(n, np.int64),
                      "cap_hint": np.full(n, np.nan)})
    empty = np.empty(0, dtype=np.int64)
    data = MarketHistory("gigaspot", np.arange(1, n + 1, dtype=np.int64), facts, state, rivals,
                         WinVersions(empty, empty, empty, np.empty(0)))
    return History(time, np.full(n_ticks, 0.03), (), np.full(n_ticks, -1, np.int64),
                   {"gigaspot": data})


def config(count: int) -> Config:
    return parse_config({
        "bot": {"decide_interval": STEP},
        "markets": {"gigaspot": {"allocation": "highest_price", "creation_fee": 0.045,
                                 "fee_fraction": 0.025}},
        "targets": [{"name": f"gpus{count}", "market": "gigaspot", "count": count,
                     "gpu_model": "RTX 4090", "max_price_per_gpu_day": CAP,
                     "oc": {"pl": 200}}]})


NO_MEMORY = "contested_at=0"
"""outbid without market memory (its default until 2026-12-03): every server valued at its price
now, a ratchet's trough included."""
VARIANTS = [
    *expand_grid("outbid"),
    *expand_grid(f"outbid:{NO_MEMORY}"),
    Variant("nicehashbot", "benchmarks.bench_bidding:NiceHashBot", {}),
    *expand_grid(f"fixed:price_per_gpu_day={CAP:g}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--servers", type=int, default=80)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--restart-hours", type=float, default=RESTART_HOURS,
                        help="hours after each restart in the restart table (0: no table)")
    args = parser.parse_args(argv)
    rows = []
    for kind in ("quiet", "war"):
        history = market(kind, days=args.days, servers=args.servers, seed=args.seed)
        quiet_part = market(kind, days=args.days, servers=args.servers, seed=args.seed,
                            without_bots=True) if kind == "war" else None
        for count in (8, 16):
            cfg = config(count)
            result = run_backtest(history, cfg, VARIANTS, RunSettings(),
                                  modes=("replay", "reactive"), targets=cfg.targets,
                                  workers=args.workers)
            by = {(m["strategy"], m["mode"]): m["targets"][0] for m in result.metrics}
            no_bots = _whole_oracle(quiet_part, cfg) if quiet_part is not None else None
            for mode in ("replay", "reactive"):
                rows.append(_figures(kind, count, mode, by, no_bots))
    _print(rows)
    if args.restart_hours > 0:
        print(f"\nrestarts in the war market: outbid from {', '.join(map(str, RESTARTS))} h in, "
              f"{args.restart_hours:g} h each, its market memory warmed (the bot's own) or empty")
        _print(_restarts(args))
    return 0


RESTARTS = (6, 12, 18, 24, 30, 36, 42)
"""Hours into the war market at which the restart table's runs start."""
RESTART_HOURS = 3.0


def _restarts(args: argparse.Namespace) -> list[dict[str, Any]]:
    """outbid started at each of ``RESTARTS`` for ``restart_hours``, with its market memory
    warmed from the market before (``bidder.warmup``: what the bot does) or empty (what it did
    before 2026-12-03): the first hours after a restart, summed over the restarts."""
    whole = market("war", days=args.days, servers=args.servers, seed=args.seed)
    span = int(args.restart_hours * 3600 / STEP)
    starts = [h * 60 for h in RESTARTS if h * 60 + span < whole.n_ticks]
    rows = []
    for count in (8, 16):
        cfg = config(count)
        target = cfg.targets[0]
        sums: dict[tuple[str, str], list[float]] = {}
        for start in starts:
            part = market("war", days=args.days, servers=args.servers, seed=args.seed,
                          ticks=slice(start, start + span + 1))
            warmed = {target.name: MarketMemory()}
            observe_history(whole, cfg, [target], warmed, until=float(whole.time[start]))
            for memory, memories in (("warmed", warmed), ("empty", None)):
                result = run_backtest(part, cfg, VARIANTS[:1], RunSettings(),
                                      modes=("replay", "reactive"), targets=cfg.targets,
                                      workers=1, memories=memories)
                for m in result.metrics:
                    t = m["targets"][0]
                    acc = sums.setdefault((m["mode"], memory), [0.0, 0.0, 0.0, 0.0])
                    acc[0] += t["cost"]
                    acc[1] += t["gpu_hours"]
                    acc[2] += t["availability"] / len(starts)
                    acc[3] += t["orders_created"]
        for mode in ("replay", "reactive"):
            for memory in ("warmed", "empty"):
                cost, gpu_hours, avail, orders = sums[(mode, memory)]
                rows.append({"target": count, "mode": mode, "memory": memory,
                             "restarts": len(starts), "avail": avail,
                             "cost/GPU-h": cost / gpu_hours, "orders": int(orders)})
    return rows


def _per_gpu_hour(row: dict[str, Any]) -> float:
    return row["cost_per_gpu_hour"] if row["cost_per_gpu_hour"] is not None else float("nan")


def _whole_oracle(history: History, cfg: Config) -> float:
    """The whole-server oracle's cost per GPU-hour on ``history`` (any variant's run gives it)."""
    result = run_backtest(history, cfg, VARIANTS[:1], RunSettings(), modes=("replay",),
                          targets=cfg.targets, workers=1)
    row = result.metrics[0]["targets"][0]
    return row["oracle_whole_servers_cost"] / row["oracle_whole_servers_gpu_hours"]


def _per_asked_gpu_hour(row: dict[str, Any]) -> float:
    """Cost per GPU-hour of the capacity asked for: GPUs held beyond the count are paid for and
    not wanted, and counting them in the hours would make a strategy that overshoots with cheap
    servers look cheaper."""
    asked = row["gpu_hours"] - row["surplus_gpu_hours"]
    return row["cost"] / asked if asked > 0 else float("nan")


def _figures(kind: str, count: int, mode: str, by: dict[tuple[str, str], dict[str, Any]],
             no_bots: float | None) -> dict[str, Any]:
    out = by[("outbid", mode)]
    blind = by[(f"outbid:{NO_MEMORY}", mode)]
    nhb = by[("nicehashbot", mode)]
    static = by[(f"fixed:price_per_gpu_day={CAP:g}", mode)]
    whole = out["oracle_whole_servers_cost"] / out["oracle_whole_servers_gpu_hours"]
    nan = float("nan")
    return {
        "market": kind, "target": count, "mode": mode,
        "outbid/whole": _per_gpu_hour(out) / whole,
        "outbid/no-bots": _per_gpu_hour(out) / no_bots if no_bots else nan,
        "no-memory/whole": _per_gpu_hour(blind) / whole,
        "avail": out["availability"], "avail no-memory": blind["availability"],
        "avail nhb": nhb["availability"],
        "cost/nhb": _per_gpu_hour(out) / _per_gpu_hour(nhb),
        "no-memory/nhb": _per_gpu_hour(blind) / _per_gpu_hour(nhb),
        "asked cost/nhb": _per_asked_gpu_hour(out) / _per_asked_gpu_hour(nhb),
        "surplus nhb %": 100 * nhb["surplus_gpu_hours"] / max(nhb["gpu_hours"], 1e-9),
        "cost/static": _per_gpu_hour(out) / _per_gpu_hour(static),
        "surplus %": 100 * out["surplus_gpu_hours"] / max(out["gpu_hours"], 1e-9),
        "rebuys": out["rebuys_within_hour"],
        "orders": out["orders_created"], "orders no-memory": blind["orders_created"],
        "orders nhb": nhb["orders_created"],
        "fractional/whole": out["oracle_full_cost"] / out["oracle_whole_servers_cost"],
    }


def _print(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())

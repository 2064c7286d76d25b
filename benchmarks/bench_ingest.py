"""Market recorder benchmark: snapshot ingest speed, bytes per snapshot, history read speed.

    python benchmarks/bench_ingest.py [--repeats 3]

Prints a table of target / actual / pass and exits 1 when a target is missed. Timings are the best
of ``--repeats`` runs (other work on a shared machine only ever makes a run slower).

- ingest: parse + validate + store one realistic snapshot (10,000 machines, ~39,000 GPUs, ~30,000
  bids) into a SQLite file, in four situations: the first snapshot into an empty database, one
  where every machine state and every bid changed (the worst case of the interval encoding), one
  where 5 % of the machines' first bid changed (a busy minute), and an unchanged one;
- the same, against a bare ``json.loads`` plus a plain ``sqlite3`` ``executemany`` of the rows that
  snapshot writes (measured in the same run, with the garbage collector paused as the ingester
  pauses it, so the comparison is the strict one);
- bytes: how much the database file grows for an unchanged snapshot (the average over thirty) against
  a fully changed one;
- history: one machine's states and bids over 10,000 recorded snapshots (a database written in
  the recorder's own format: 1,000 machines, ~400,000 state and bid versions).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import insert

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.snapshot_gen import change_everything, change_some, counts, encode, make_snapshot
from storage.bulk import executemany
from storage.db import open_database
from storage.gigaspot_ingest import SnapshotIngester
from storage.history import machine_history, bid_intervals
from storage.models import BIDS, FACTS, STATES, Currency, GigaspotSnapshot

T0 = 1_735_176_176
TARGET_INGEST_S = 1.0
TARGET_RATIO = 3.0
TARGET_BYTES_FRACTION = 0.10
TARGET_HISTORY_S = 0.100


def best_of(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


def file_bytes(path: Path) -> int:
    """The database's size once its write-ahead log is folded in."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def measure_ingest(folder: Path, plan: list[tuple[str, bytes]], repeats: int) -> dict[str, float]:
    """Best time of each step of ``plan``, replayed on a fresh database each run."""
    seconds = {name: float("inf") for name, _ in plan}
    for run in range(repeats):
        with open_database(f"sqlite:///{folder / f'ingest-{run}.db'}", writer=True) as db:
            ingester = SnapshotIngester(db.sessions)
            for step, (name, raw) in enumerate(plan):
                start = time.perf_counter()
                ingest(ingester, raw, step)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds


def ingest(ingester: SnapshotIngester, raw: bytes, minute: int) -> None:
    when = T0 + 60 * minute
    ingester.ingest(raw, snapshot_time=when, fetched_at=when, source=f"prod_bench_{when}.json")


def measure_growth(folder: Path, raw_first: bytes, raw_changed: bytes, unchanged: int
                   ) -> tuple[int, float]:
    """Bytes the database file grows by for a fully changed snapshot, and on average for each of
    ``unchanged`` snapshots that repeat it (one alone may fit in pages already there)."""
    path = folder / "growth.db"
    with open_database(f"sqlite:///{path}", writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        ingest(ingester, raw_first, 0)
        before = file_bytes(path)
        ingest(ingester, raw_changed, 1)
        changed = file_bytes(path)
        for minute in range(2, 2 + unchanged):
            ingest(ingester, raw_changed, minute)
        after = file_bytes(path)
    return changed - before, (after - changed) / unchanged


def baseline_rows(snapshot: dict) -> tuple[list[tuple], list[tuple]]:
    """The state and bid rows a fully changed snapshot writes, as plain tuples."""
    states, bids = [], []
    for key in sorted(snapshot, key=int):
        m = snapshot[key]
        states.append((int(key), 2, m["online"], m["on_demand_rented"], m["working_properly"],
                       m["reliability"], m["min_bid"], m["max_rental_length"], m["energy_price"]))
        bids.extend((int(key), b["id"], 2, b["owner"], b["active"], b["price"], 1, b["pl"],
                     b["to_cache"], b["cached"]) for b in m["bids"])
    return states, bids


def measure_baseline(folder: Path, raw: bytes, snapshot: dict, repeats: int) -> float:
    """``json.loads`` of the snapshot plus ``executemany`` of its rows into plain tables."""
    states, bids = baseline_rows(snapshot)

    def run() -> float:
        path = folder / "baseline.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE state (machine_id, first, online, rented, working, reliability, "
                     "min_bid, mrl, energy)")
        conn.execute("CREATE TABLE bid (machine_id, bid_id, first, owner, active, price, currency,"
                     " pl, to_cache, cached)")
        gc.disable()
        start = time.perf_counter()
        json.loads(raw)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", states)
        conn.executemany("INSERT INTO bid VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", bids)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        gc.enable()
        conn.close()
        return elapsed

    return best_of(repeats, run)


def _versions(rng: np.random.Generator, n_snapshots: int, p_change: float
              ) -> list[tuple[int, int | None]]:
    """(first, end) snapshot ids of one key's versions when it changes with ``p_change`` a snapshot."""
    k = rng.binomial(n_snapshots - 1, p_change)
    points = np.sort(rng.choice(np.arange(2, n_snapshots + 1), size=k, replace=False)).tolist()
    return list(zip([1, *points], [*points, None]))


def build_history(path: Path, n_snapshots: int, n_machines: int, target: int) -> None:
    """A database in the recorder's format: every machine listed in every snapshot, 3 bids each;
    machine ``target`` changes state in 30 % of the snapshots and each of its bids in 20 %, the
    others in 1 %."""
    rng = np.random.default_rng(7)
    with open_database(f"sqlite:///{path}", writer=True) as db, db.sessions.begin() as session:
        connection = session.connection()
        session.execute(insert(Currency).values(id=1, name="CLORE-Blockchain"))
        executemany(connection, insert(GigaspotSnapshot.__table__),
                    ("id", "time", "fetched_at", "recorded_at", "source", "sha256", "machines"),
                    [(i, T0 + 60 * i, T0 + 60 * i, T0 + 60 * i, "bench", f"{i:064x}", n_machines)
                     for i in range(1, n_snapshots + 1)])
        facts, states, bids = [], [], []
        for machine in range(target, target + n_machines):
            busy = machine == target
            facts.append((machine, 1, '[{"pl":[150,450],"model":"RTX 4090"}]', 1, "RTX 4090"))
            for first, end in _versions(rng, n_snapshots, 0.3 if busy else 0.01):
                states.append((machine, first, end, True, False, True, float(rng.random()),
                               float(rng.uniform(1, 20)), 864_000, 0.05))
            for bid in range(3):
                for first, end in _versions(rng, n_snapshots, 0.2 if busy else 0.01):
                    bids.append((machine, machine * 10 + bid, first, end, 1000 + bid, bid == 0,
                                 float(rng.uniform(1, 60)), 1, 300.0))
        executemany(connection, insert(FACTS), ("machine_id", "first_snapshot", "gpus",
                                                "gpu_count", "gpu_model"), facts)
        executemany(connection, insert(STATES), (
            "machine_id", "first_snapshot", "end_snapshot", "online", "on_demand_rented",
            "working_properly", "reliability", "min_bid", "max_rental_length", "energy_price"),
            states)
        executemany(connection, insert(BIDS), (
            "machine_id", "bid_id", "first_snapshot", "end_snapshot", "owner", "active", "price",
            "currency_id", "pl"), bids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the best counts")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
          f"sqlite {sqlite3.sqlite_version}")
    first = make_snapshot(machines=10_000, bids=30_000, seed=1)
    everything = change_everything(first, seed=2)
    busy = change_some(everything, fraction=0.05, seed=3)
    machines, gpus, bids = counts(first)
    raw_first, raw_everything, raw_busy = encode(first), encode(everything), encode(busy)
    print(f"snapshot: {machines:,} machines, {gpus:,} GPUs, {bids:,} bids, "
          f"{len(raw_first) / 1e6:.1f} MB of JSON")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder = Path(tmp)
        seconds = measure_ingest(folder, [
            ("first", raw_first), ("everything", raw_everything),
            ("unchanged", raw_everything), ("busy", raw_busy)], args.repeats)
        changed_bytes, unchanged_bytes = measure_growth(folder, raw_first, raw_everything, 30)
        baseline = measure_baseline(folder, raw_everything, everything, args.repeats)
        history_db = folder / "history.db"
        n_snapshots, target = 10_000, 50_000
        started = time.perf_counter()
        build_history(history_db, n_snapshots, 1_000, target)
        print(f"history database: {n_snapshots:,} snapshots written in "
              f"{time.perf_counter() - started:.1f} s, {history_db.stat().st_size / 1e6:.0f} MB")
        with open_database(f"sqlite:///{history_db}", writer=False) as db, \
                db.sessions() as session:
            history = machine_history(session, target)
            assert len(history) == n_snapshots, len(history)

            def read_history() -> float:
                start = time.perf_counter()
                machine_history(session, target)
                return time.perf_counter() - start

            history_s = best_of(max(args.repeats, 5), read_history)
            start = time.perf_counter()
            intervals = bid_intervals(session, None, None)
            intervals_s = time.perf_counter() - start

    ratio = seconds["everything"] / baseline
    fraction = unchanged_bytes / changed_bytes
    rows = [
        ("ingest: every state and bid changed", f"<= {TARGET_INGEST_S:.2f} s",
         f"{seconds['everything']:.3f} s", seconds["everything"] <= TARGET_INGEST_S),
        ("ingest: first snapshot, empty database", f"<= {TARGET_INGEST_S:.2f} s",
         f"{seconds['first']:.3f} s", seconds["first"] <= TARGET_INGEST_S),
        ("ingest: 5 % of bids changed", f"<= {TARGET_INGEST_S:.2f} s",
         f"{seconds['busy']:.3f} s", seconds["busy"] <= TARGET_INGEST_S),
        ("ingest: unchanged", f"<= {TARGET_INGEST_S:.2f} s",
         f"{seconds['unchanged']:.3f} s", seconds["unchanged"] <= TARGET_INGEST_S),
        ("ingest / (json.loads + executemany)", f"<= {TARGET_RATIO:.1f}x",
         f"{ratio:.2f}x ({baseline:.3f} s)", ratio <= TARGET_RATIO),
        ("bytes: unchanged / every changed", f"<= {TARGET_BYTES_FRACTION:.0%}",
         f"{fraction:.3%} ({unchanged_bytes:,.0f} / {changed_bytes:,} B)",
         fraction <= TARGET_BYTES_FRACTION),
        (f"machine_history, {n_snapshots:,} snapshots", f"<= {TARGET_HISTORY_S * 1000:.0f} ms",
         f"{history_s * 1000:.1f} ms ({len(history.bid_id):,} bids)",
         history_s <= TARGET_HISTORY_S),
        (f"bid_intervals, all {n_snapshots:,} snapshots", "(info)",
         f"{intervals_s:.2f} s ({len(intervals):,} versions)", True),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'target':<10}  {'actual':<36}  pass")
    for name, target_text, actual, ok in rows:
        print(f"{name:<{width}}  {target_text:<10}  {actual:<36}  {'yes' if ok else 'NO'}")
    missed = [name for name, _, _, ok in rows if not ok]
    if missed:
        print(f"\nmissed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prune benchmark: how long ``bidder db prune`` holds the write lock per batch, and in all.

    python benchmarks/bench_prune.py [--days 2] [--machines 10000] [--backend sqlite|postgresql|both]
                                     [--batch-rows N] [--dir DIR] [--pg-url URL]

Builds the GigaSPOT history of ``bench_scale`` (1-minute snapshots; each state changes in about
1 % of them, each of three bid slots in about 2 %), then prunes its first half through
``storage.prune`` and prints the plan's read time, the number of batches and the longest and
median batch (each one transaction: on SQLite, how long the bot's writers may wait for the lock;
they wait 10 s at most), the total, and the size before and after. The pause the prune makes
between batches on SQLite (``WRITER_TURN``) is left out of the timing. ``--dir DIR`` keeps the
built SQLite file (pruned is a copy of it), to measure again without building.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_scale import T0, _servers, build, recorded  # noqa: E402
from storage.db import open_database  # noqa: E402
from storage.prune import BATCH_ROWS, plan_prune, prune  # noqa: E402
from storage.vacuum import database_size  # noqa: E402


def measure(url: str, snapshots: int, batch_rows: int) -> None:
    cut = T0 + 60.0 * (snapshots // 2)
    with open_database(url, writer=True) as db:
        size = database_size(db.engine)
        started = time.perf_counter()
        with open_database(url, writer=False) as reader, reader.engine.connect() as connection:
            plan = plan_prune(connection, cut, batch_rows=batch_rows)
        planned = time.perf_counter() - started
        stamps = [time.perf_counter()]
        result = prune(db.engine, plan, turn=lambda: stamps.append(time.perf_counter()))
        batches = [b - a for a, b in zip(stamps, stamps[1:])]
        after = database_size(db.engine)
    rows = sum(result.rows.values())
    print(f"  {rows:,} rows removed in {result.batches:,} batches of at most {batch_rows:,} rows; "
          f"plan read in {planned:.1f} s")
    if batches:
        print(f"  batch: longest {max(batches) * 1000:.0f} ms, median "
              f"{statistics.median(batches) * 1000:.0f} ms; all batches {sum(batches):.1f} s "
              f"({rows / max(sum(batches), 1e-9):,.0f} rows/s)")
    print(f"  size {(size or 0) / 1e6:,.0f} MB before, {(after or 0) / 1e6:,.0f} MB after "
          "(no VACUUM: the space is reused)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--backend", choices=("both", "sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    snapshots = int(args.days * 1440)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    name = f"scale-{args.days:g}d-{args.machines}m-time.db"
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        folder = args.dir if args.dir is not None else Path(tmp)
        for backend, url in _servers(backends, folder, name, args.pg_url):
            if recorded(url, snapshots) is None:
                started = time.perf_counter()
                build(url, snapshots, args.machines)
                print(f"{backend}: built in {time.perf_counter() - started:.0f} s")
            if backend == "sqlite":  # prune a copy: the built file stays for the next run
                copy = Path(tmp) / "pruned.db"
                shutil.copyfile(folder / name, copy)
                url = f"sqlite:///{copy}"
            print(f"{backend}: {snapshots:,} snapshots x {args.machines:,} machines, pruning the "
                  "first half")
            measure(url, snapshots, args.batch_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

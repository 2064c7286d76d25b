"""Command-line start-up benchmark: how long ``bidder --version``, ``bidder --help`` and
``bidder status`` take as whole processes, the way a shell or a monitor runs them.

    python benchmarks/bench_cli.py [--runs 9]

Each command runs ``--runs`` times as a fresh process, interleaved with a bare interpreter
(``python -c pass``) as the baseline measured in the same run; the table shows each one's median
wall time (and minimum), its median ratio to the baseline, its median CPU time (user + system,
steadier than wall time on a busy machine) and that against the baseline's, and the target (on
the median wall time). ``bidder status`` reads a database
holding a simulated bot run (``bidder run --sim``) and two recorded 10,000-machine GigaSPOT
snapshots, once with the built-in defaults and once with ``--config`` (the shipped example
config with ``data_dir`` pointing at it), as a monitor calls it. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGETS = {"bidder --version": 0.3, "bidder --help": 0.3, "bidder status": 0.5,
           "bidder status --config": 0.5}
MACHINES = 10_000


def bidder_command() -> list[str]:
    """The installed ``bidder`` script beside this interpreter, else ``python -m bidder``."""
    script = Path(sys.executable).with_name("bidder")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bidder"]


def prepare(folder: Path, env: dict[str, str]) -> None:
    """A simulated bot run, then two 10,000-machine snapshots recorded after it, in
    ``folder/clore-bidder/bidder-sim.db`` (what ``bidder status --sim`` reads)."""
    from benchmarks.snapshot_gen import change_everything, encode, make_snapshot
    from storage.db import open_database
    from storage.gigaspot_ingest import SnapshotIngester

    started = time.perf_counter()
    run = subprocess.run([*bidder_command(), "run", "--sim", "--duration", "3"], env=env,
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"bidder run --sim failed:\n{run.stderr}")
    url = f"sqlite:///{folder / 'clore-bidder' / 'bidder-sim.db'}"
    snapshot = make_snapshot(MACHINES)
    later = int(time.time()) + 10 * 86_400  # after anything the accelerated run recorded
    with open_database(url, writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        for k, data in enumerate((snapshot, change_everything(snapshot, seed=2))):
            ingester.ingest(encode(data), snapshot_time=later + 60 * k, fetched_at=later + 60 * k,
                            source=f"bench_{later + 60 * k}.json")
    print(f"prepared a simulated run and two {MACHINES:,}-machine snapshots in "
          f"{time.perf_counter() - started:.1f} s")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``. CPU time (user + system) counts only
    the command's own work, so it moves less than wall time on a busy shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs of each command")
    args = parser.parse_args()
    bidder = bidder_command()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_DATA_HOME": tmp, "CLORE_API_KEY": ""}
        prepare(Path(tmp), env)
        config = Path(tmp) / "monitor.toml"
        example = Path(__file__).resolve().parent.parent / "config.example.toml"
        config.write_text(f'data_dir = "{Path(tmp) / "clore-bidder"}"\n'
                          + example.read_text(encoding="utf-8"), encoding="utf-8")
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "bidder --version": [*bidder, "--version"],
            "bidder --help": [*bidder, "--help"],
            "bidder status": [*bidder, "status", "--sim"],
            "bidder status --config": [*bidder, "status", "--sim", "--config", str(config)],
        }
        for argv in commands.values():  # warm the file cache and the bytecode
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so a busy moment hits every command alike
            for name, argv in commands.items():
                wall, used = timed(argv, env)
                times[name].append(wall)
                cpu[name].append(used)
    baseline = times["python -c pass (baseline)"]
    print(f"machine: {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} runs each; "
          f"{' '.join(bidder)}")
    print(f"{'command':<28}{'median s':>10}{'min s':>8}{'÷ baseline':>12}{'cpu s':>8}"
          f"{'cpu ÷ baseline':>16}{'target s':>10}  pass")
    cpu_baseline = statistics.median(cpu["python -c pass (baseline)"])
    missed = 0
    for name, series in times.items():
        median = statistics.median(series)
        ratio = statistics.median(t / b for t, b in zip(series, baseline))
        target = TARGETS.get(name)
        ok = target is None or median <= target
        missed += not ok
        used = statistics.median(cpu[name])
        print(f"{name:<28}{median:>10.3f}{min(series):>8.3f}{ratio:>11.1f}x{used:>8.3f}"
              f"{used / cpu_baseline:>15.1f}x{'' if target is None else f'{target:.1f}':>10}  "
              f"{'' if target is None else ('yes' if ok else 'NO')}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

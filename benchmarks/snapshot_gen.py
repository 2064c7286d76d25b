"""Realistic GigaSPOT snapshots for benchmarks: the CDN file's shape at the market's planned scale.

The shape follows the documented example (``gigaspot-market.txt``); the proportions follow what we
plan for (SEMANTICS.md: 5,000-20,000 machines, tens of thousands of bids). Everything comes from one
seeded ``random.Random``, so a benchmark run is repeatable.
"""

from __future__ import annotations

import json
import random
from typing import Any

GPU_MODELS: dict[str, dict[str, list[int]]] = {
    # model -> OC ranges of one GPU: pl, mem_lock, core_lock, mem_offset, core_offset
    "RTX 4090": {"pl": [150, 450], "mem_lock": [405, 10501], "core_lock": [210, 2450],
                 "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
    "RTX 3090": {"pl": [100, 350], "mem_lock": [405, 9751], "core_lock": [210, 2100],
                 "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
    "RTX 3080": {"pl": [100, 320], "mem_lock": [405, 9501], "core_lock": [210, 2100],
                 "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
    "RTX 3070": {"pl": [100, 240], "mem_lock": [405, 7001], "core_lock": [210, 2100],
                 "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
    "RTX 3060": {"pl": [100, 170], "mem_lock": [405, 7501], "core_lock": [210, 2100],
                 "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
    "GTX 1660 SUPER": {"pl": [70, 100], "mem_lock": [405, 7001], "core_lock": [300, 1470],
                       "mem_offset": [-2000, 2000], "core_offset": [-1000, 100]},
    "RTX A5000": {"pl": [100, 230], "mem_lock": [405, 8001], "core_lock": [210, 2100],
                  "mem_offset": [-2000, 2000], "core_offset": [-1000, 200]},
}
GPU_COUNTS = (1, 2, 4, 6, 8)
GPU_COUNT_WEIGHTS = (35, 15, 15, 10, 25)  # mean about 3.85 GPUs per machine
CPUS = (
    "Intel(R) Celeron(R) CPU B815 @ 1.60GHz",
    "Intel(R) Xeon(R) CPU E5-2698 v3 @ 2.30GHz",
    "AMD Ryzen 9 5950X 16-Core Processor",
    "AMD EPYC 7302 16-Core Processor",
    "Intel(R) Core(TM) i5-10400 CPU @ 2.90GHz",
)
COUNTRIES = ("RU", "KZ", "US", "DE", "CZ", "PL", "UA", "CN", "FI", "NL")
CLORE = "CLORE-Blockchain"


def make_snapshot(machines: int = 10_000, bids: int = 30_000, seed: int = 1) -> dict[str, Any]:
    """A snapshot dict of ``machines`` machines carrying about ``bids`` bids in all."""
    rng = random.Random(seed)
    snapshot: dict[str, Any] = {}
    next_bid_id = 500_000
    bids_per_machine = bids / machines
    for machine_id in rng.sample(range(10_000, 10_000 + machines * 8), machines):
        model = rng.choice(list(GPU_MODELS))
        ranges = GPU_MODELS[model]
        n_gpus = rng.choices(GPU_COUNTS, GPU_COUNT_WEIGHTS)[0]
        cores = rng.choice((2, 4, 8, 16, 32))
        n_bids = min(int(rng.expovariate(1 / bids_per_machine) + 0.5), 40)
        machine_bids = []
        for k in range(n_bids):
            machine_bids.append({
                "owner": rng.randrange(1, 3000), "id": next_bid_id, "active": k == 0,
                "to_cache": rng.random() < 0.5, "cached": rng.random() < 0.3,
                "price": round(rng.uniform(0.5, 60.0), 4), "currency": CLORE,
                "pl": rng.randrange(ranges["pl"][0], ranges["pl"][1] + 1),
            })
            next_bid_id += 1
        snapshot[str(machine_id)] = {
            "bids": machine_bids,
            "on_demand_rented": rng.random() < 0.1,
            "online": rng.random() < 0.9,
            "cpu": rng.choice(CPUS),
            "cores": cores,
            "threads": cores * 2,
            "ram": round(rng.uniform(3.5, 256.0), 4),
            "gpus": [{**{k: list(v) for k, v in ranges.items()}, "model": model}
                     for _ in range(n_gpus)],
            "working_properly": rng.random() < 0.95,
            "cuda": rng.choice(("11.6", "12.2", "12.4")),
            "max_rental_length": rng.choice((0, 86_400, 792_000, 864_000, 1_728_000)),
            "cc": rng.choice(COUNTRIES),
            "host": rng.randrange(1, 600),
            "reliability": round(rng.uniform(0.5, 1.0), 4),
            "min_bid": round(rng.uniform(1.0, 20.0), 4),
            "energy_price": rng.choice((0.03, 0.042, 0.05, 0.08, 0.12)),
        }
    return snapshot


def change_everything(snapshot: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same machines and bids with every machine state and every bid changed: the worst case
    for an interval encoding, where each row is closed and a new one opened."""
    rng = random.Random(seed)
    changed: dict[str, Any] = {}
    for machine_id, machine in snapshot.items():
        changed[machine_id] = {
            **machine,
            "reliability": round(min(1.0, machine["reliability"] + rng.uniform(0.0001, 0.01)), 4)
            if machine["reliability"] < 0.99 else round(machine["reliability"] - 0.001, 4),
            "min_bid": round(machine["min_bid"] + rng.uniform(0.0001, 0.5), 4),
            "bids": [{**bid, "price": round(bid["price"] + rng.uniform(0.0001, 1.0), 4)}
                     for bid in machine["bids"]],
        }
    return changed


def change_some(snapshot: dict[str, Any], fraction: float, seed: int) -> dict[str, Any]:
    """About ``fraction`` of the machines get a new bid price on their first bid: a quiet minute."""
    rng = random.Random(seed)
    changed = dict(snapshot)
    for machine_id, machine in snapshot.items():
        if machine["bids"] and rng.random() < fraction:
            first, *rest = machine["bids"]
            changed[machine_id] = {
                **machine, "bids": [{**first, "price": round(first["price"] * 1.01 + 0.0001, 4)}, *rest]}
    return changed


def encode(snapshot: dict[str, Any]) -> bytes:
    """The bytes the CDN serves: compact JSON."""
    return json.dumps(snapshot, separators=(",", ":")).encode()


def counts(snapshot: dict[str, Any]) -> tuple[int, int, int]:
    """(machines, GPUs, bids) of a snapshot."""
    return (len(snapshot), sum(len(m["gpus"]) for m in snapshot.values()),
            sum(len(m["bids"]) for m in snapshot.values()))

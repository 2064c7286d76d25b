"""The simulated hardware: spot servers and GigaSPOT machines, generated from a seed.

Numbers aim at plausible rather than exact: prices in CLORE per day for the GPUs people rent on
Clore, reliability 0.6..1.0, energy 0.03..0.2 $/kWh, and a few machines that do not work properly
or cannot be rented (``max_rental_length == 0``), so the bot meets them in tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

CLORE = "CLORE-Blockchain"
BITCOIN = "bitcoin"
USD = "USD-Blockchain"
DAY = 86400.0


@dataclass(frozen=True)
class GpuModel:
    model: str
    """As the GigaSPOT snapshot names it, e.g. ``"RTX 4090"``."""
    name: str
    """As the marketplace names it, e.g. ``"NVIDIA GeForce RTX 4090"``."""
    vram: int
    spot_usd: float
    """Typical spot floor, USD per GPU-day."""
    mining_usd: float
    """Typical mining revenue, USD per GPU-day (what caps a miner's GigaSPOT bid)."""
    pl: tuple[int, int]
    core_lock: tuple[int, int]
    mem_lock: tuple[int, int]
    weight: int
    """How common the model is."""


CATALOGUE: tuple[GpuModel, ...] = (
    # model, marketplace name, VRAM (GB), spot floor and mining revenue ($ per GPU-day),
    # then the pl, core_lock and mem_lock ranges, and how common the model is
    GpuModel("RTX 4090", "NVIDIA GeForce RTX 4090", 24, 4.0, 1.6,
             (150, 450), (210, 3105), (405, 10501), 6),
    GpuModel("RTX 4080", "NVIDIA GeForce RTX 4080", 16, 2.8, 1.1,
             (150, 320), (210, 3000), (405, 11201), 2),
    GpuModel("RTX 3090", "NVIDIA GeForce RTX 3090", 24, 2.2, 0.9,
             (100, 350), (210, 2100), (405, 9751), 5),
    GpuModel("RTX 3080", "NVIDIA GeForce RTX 3080", 10, 1.4, 0.7,
             (100, 320), (210, 2100), (405, 9501), 4),
    GpuModel("RTX 3070", "NVIDIA GeForce RTX 3070", 8, 1.0, 0.5,
             (100, 220), (210, 2100), (405, 7001), 3),
    GpuModel("RTX 3060", "NVIDIA GeForce RTX 3060", 12, 0.7, 0.35,
             (100, 170), (210, 2100), (405, 7501), 4),
    GpuModel("RTX A5000", "NVIDIA RTX A5000", 24, 1.8, 0.8,
             (100, 230), (210, 2100), (405, 8001), 1),
    GpuModel("A100", "NVIDIA A100 80GB PCIe", 80, 9.0, 2.0,
             (150, 300), (210, 1410), (405, 1512), 1),
    GpuModel("GTX 1660 SUPER", "NVIDIA GeForce GTX 1660 SUPER", 6, 0.3, 0.15,
             (70, 125), (300, 1470), (405, 7001), 3),
)

GPU_COUNTS = ((1, 35), (2, 20), (4, 25), (6, 5), (8, 15))
CPUS = (("AMD Ryzen 9 5950X 16-Core Processor", 16, 32),
        ("Intel(R) Core(TM) i9-11900 @ 2.50GHz", 8, 16),
        ("AMD EPYC 7532 32-Core Processor", 32, 64),
        ("Intel(R) Xeon(R) CPU E5-2698 v3 @ 2.30GHz", 16, 32),
        ("Intel(R) Celeron(R) CPU G3930 @ 2.90GHz", 2, 2),
        ("AMD Ryzen 5 5600X 6-Core Processor", 6, 12))
BOARDS = ("Z590 GAMING X", "ROG STRIX B550-F", "H110 PRO BTC+", "WRX80 CREATOR", "X570 AORUS ELITE")
COUNTRIES = ("US", "DE", "CZ", "PL", "RU", "KZ", "UA", "CA", "NL", "FI", "VN", "BR")
CUDA = ("11.8", "12.2", "12.4")
SPOT_MRL_HOURS = (24, 72, 168, 336, 720)
GIGASPOT_MRL = (259_200, 604_800, 792_000, 864_000, 1_728_000, 2_592_000)
"""Seconds (3 to 30 days)."""


@dataclass
class SpotServer:
    """A server on the spot market: offers compete for it one server at a time."""

    id: int
    owner: int
    gpu: GpuModel
    gpus: int
    mrl_hours: int
    floors: dict[str, float]
    """Lowest spot price per day, by accepted currency (``min_pricing``)."""
    on_demand: dict[str, float]
    specs: dict[str, Any]
    reliability: float
    visibility: str = "public"
    demand: float = 1.0
    """How strongly competitors are drawn to this server."""
    online: bool = True
    rented: bool = False
    """Rented on demand: no spot offer runs."""

    market = "spot"

    @property
    def rentable(self) -> bool:
        return self.online and not self.rented


@dataclass
class Machine:
    """A GigaSPOT machine: bids compete for it under the allocation rule."""

    id: int
    host: int
    gpu: GpuModel
    gpu_ranges: tuple[dict[str, list[int]], ...]
    """Per GPU: the allowed ``pl``, ``mem_lock``, ``core_lock``, ``mem_offset``, ``core_offset``."""
    cpu: str
    cores: int
    threads: int
    ram: float
    cuda: str
    cc: str
    working_properly: bool
    max_rental_length: int
    reliability: float
    min_bid: float
    """CLORE per day."""
    energy_price: float
    """USD per kWh."""
    demand: float = 1.0
    online: bool = True
    rented: bool = False
    """Rented on demand (``on_demand_rented``): no bid runs."""

    market = "gigaspot"

    @property
    def gpus(self) -> int:
        return len(self.gpu_ranges)

    @property
    def rentable(self) -> bool:
        return self.online and not self.rented and self.max_rental_length > 0

    def snapshot_fields(self) -> dict[str, Any]:
        """The machine's fields after ``bids``, in the documented order."""
        return {
            "on_demand_rented": self.rented, "online": self.online, "cpu": self.cpu,
            "cores": self.cores, "threads": self.threads, "ram": self.ram,
            "gpus": [{**ranges, "model": self.gpu.model} for ranges in self.gpu_ranges],
            "working_properly": self.working_properly, "cuda": self.cuda,
            "max_rental_length": self.max_rental_length, "cc": self.cc, "host": self.host,
            "reliability": self.reliability, "min_bid": self.min_bid,
            "energy_price": self.energy_price,
        }


Venue = SpotServer | Machine


@dataclass
class World:
    servers: dict[int, SpotServer] = field(default_factory=dict)
    machines: dict[int, Machine] = field(default_factory=dict)

    def venue(self, venue_id: int) -> Venue | None:
        return self.servers.get(venue_id) or self.machines.get(venue_id)

    def venues(self) -> list[Venue]:
        return [*self.servers.values(), *self.machines.values()]


def generate_world(seed: int, spot_servers: int, gigaspot_machines: int, clore_usd: float,
                   btc_usd: float) -> World:
    """A market of ``spot_servers`` servers and ``gigaspot_machines`` machines (disjoint ids)."""
    rng = random.Random(f"{seed}:world")
    world = World()
    next_id = 1000
    for _ in range(spot_servers):
        next_id += rng.randint(1, 40)
        world.servers[next_id] = _spot_server(rng, next_id, clore_usd, btc_usd)
    next_id += 20_000
    for _ in range(gigaspot_machines):
        next_id += rng.randint(1, 40)
        world.machines[next_id] = _machine(rng, next_id, clore_usd)
    return world


def _gpu(rng: random.Random) -> tuple[GpuModel, int]:
    model = rng.choices(CATALOGUE, weights=[m.weight for m in CATALOGUE])[0]
    count = rng.choices([c for c, _ in GPU_COUNTS], weights=[w for _, w in GPU_COUNTS])[0]
    return model, count


def _reliability(rng: random.Random) -> float:
    """Mostly high, never below 0.6."""
    return round(1.0 - 0.4 * rng.random() ** 2, 4)


def _demand(rng: random.Random) -> float:
    """A few popular venues draw most competitors."""
    return rng.lognormvariate(0.0, 1.0)


def _spot_server(rng: random.Random, server_id: int, clore_usd: float,
                 btc_usd: float) -> SpotServer:
    gpu, count = _gpu(rng)
    floor_usd = gpu.spot_usd * count * rng.uniform(0.6, 1.2)
    floors = {CLORE: round(floor_usd / clore_usd, 4), BITCOIN: round(floor_usd / btc_usd, 8)}
    if rng.random() < 0.3:
        floors[USD] = round(floor_usd, 2)
    markup = rng.uniform(1.6, 2.6)
    cpu, cores, threads = rng.choice(CPUS)
    ram = rng.choice((31.3, 62.7, 125.8, 251.6))
    specs = {
        "mb": rng.choice(BOARDS), "cpu": cpu, "cpus": f"{cores}/{threads}", "ram": ram,
        "disk": f"NVMe disk {rng.choice((247.4, 476.9, 931.5, 1863.0))}GB",
        "disk_speed": rng.choice((0, 1500, 2000, 3500)),
        "gpu": f"{count}x {gpu.name}", "gpuram": gpu.vram,
        "net": {"up": round(rng.uniform(20, 900), 2), "down": round(rng.uniform(80, 950), 2),
                "cc": rng.choice(COUNTRIES)},
    }
    return SpotServer(
        id=server_id, owner=rng.randint(2, 400), gpu=gpu, gpus=count,
        mrl_hours=rng.choice(SPOT_MRL_HOURS), floors=floors,
        on_demand={cur: round(v * markup, 8 if cur == BITCOIN else 4) for cur, v in floors.items()},
        specs=specs, reliability=_reliability(rng),
        visibility="private" if rng.random() < 0.05 else "public", demand=_demand(rng),
    )


def _machine(rng: random.Random, machine_id: int, clore_usd: float) -> Machine:
    gpu, count = _gpu(rng)
    ranges = tuple(
        {"pl": [gpu.pl[0], gpu.pl[1] - rng.choice((0, 0, 0, 10))], "mem_lock": list(gpu.mem_lock),
         "core_lock": list(gpu.core_lock), "mem_offset": [-2000, 2000],
         "core_offset": [-1000, 100 if gpu.pl[1] < 150 else 200]}
        for _ in range(count))
    cpu, cores, threads = rng.choice(CPUS)
    mrl = 0 if rng.random() < 0.03 else rng.choice(GIGASPOT_MRL)
    return Machine(
        id=machine_id, host=rng.randint(1, 120), gpu=gpu, gpu_ranges=ranges, cpu=cpu, cores=cores,
        threads=threads, ram=round(rng.uniform(3.5, 256.0), 4), cuda=rng.choice(CUDA),
        cc=rng.choice(COUNTRIES), working_properly=rng.random() >= 0.05, max_rental_length=mrl,
        reliability=_reliability(rng),
        min_bid=round(rng.uniform(0.3, 0.6) * gpu.mining_usd * count / clore_usd, 4),
        energy_price=round(0.03 + 0.17 * rng.random() ** 2, 3), demand=_demand(rng),
    )

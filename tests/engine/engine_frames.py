"""Hand-built MarketFrames and targets for the view and rules tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bidder.config import CLORE, TargetConfig
from storage.frames import MarketFrame

NOW = 1_700_000_000.0


@dataclass
class Bid:
    price: float
    mine: bool = False
    pl: float = float("nan")
    active: bool = False
    owner: int = -1


@dataclass
class Server:
    id: int
    gpus: int = 1
    model: str = "NVIDIA GeForce RTX 4090"
    country: str = "DE"
    reliability: float = 0.99
    online: bool = True
    rentable: bool = True
    working: bool = True
    energy: float = float("nan")
    pl: tuple[float, float] = (float("nan"), float("nan"))
    floors: dict[str, float] = field(default_factory=lambda: {CLORE: 10.0})
    bids: list[Bid] = field(default_factory=list)


def make_frame(servers: list[Server], *, market: str = "spot", clore_usd: float = 0.05,
               rates: dict[str, float] | None = None, time: float = NOW) -> MarketFrame:
    bids = [b for s in servers for b in s.bids]
    currencies = {c for s in servers for c in s.floors}
    return MarketFrame(
        market=market, time=time, clore_usd=clore_usd,
        rates_usd=rates if rates is not None else {CLORE: clore_usd},
        server_id=np.array([s.id for s in servers], dtype=np.int64),
        gpus=np.array([s.gpus for s in servers], dtype=np.int32),
        gpu_model=np.array([s.model for s in servers], dtype=object),
        country=np.array([s.country for s in servers], dtype=object),
        reliability=np.array([s.reliability for s in servers], dtype=np.float64),
        online=np.array([s.online for s in servers], dtype=bool),
        rentable=np.array([s.rentable for s in servers], dtype=bool),
        working_properly=np.array([s.working for s in servers], dtype=bool),
        energy_price=np.array([s.energy for s in servers], dtype=np.float64),
        pl_min=np.array([s.pl[0] for s in servers], dtype=np.float64),
        pl_max=np.array([s.pl[1] for s in servers], dtype=np.float64),
        observed_at=np.full(len(servers), time),
        floors={c: np.array([s.floors.get(c, np.nan) for s in servers]) for c in currencies},
        bid_start=np.concatenate([[0], np.cumsum([len(s.bids) for s in servers])]).astype(np.int64),
        bid_id=np.arange(len(bids), dtype=np.int64),
        bid_owner=np.array([b.owner for b in bids], dtype=np.int64),
        bid_price=np.array([b.price for b in bids], dtype=np.float64),
        bid_pl=np.array([b.pl for b in bids], dtype=np.float64),
        bid_active=np.array([b.active for b in bids], dtype=bool),
        bid_mine=np.array([b.mine for b in bids], dtype=bool),
    )


def make_target(**overrides: Any) -> TargetConfig:
    fields: dict[str, Any] = {"name": "t", "market": "spot", "count": 1,
                              "max_price_per_gpu_day": 30.0}
    if overrides.get("market") == "gigaspot":
        fields["oc"] = {"pl": 300}
    fields.update(overrides)
    return TargetConfig.model_validate(fields)

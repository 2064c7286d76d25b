"""Hand-built TargetViews: the strategies see only these columns."""

from __future__ import annotations

import numpy as np

from strategies.base import Candidates, OwnOrder, TargetSpec, TargetView

NOW = 1_700_000_000.0


def make_view(rows: list[dict], *, orders: tuple[OwnOrder, ...] = (), count: int = 1,
              unit: str = "gpus", cap_per_gpu_day: float = 30.0, market: str = "spot",
              fee_fraction: float = 0.0, usd_per_unit: float = 0.05,
              recent_wins: np.ndarray | None = None) -> TargetView:
    """``rows``: dicts with ``id`` and optionally ``gpus`` (1), ``floor`` (10), ``threshold`` (0),
    ``eligible`` (True)."""
    gpus = np.array([r.get("gpus", 1) for r in rows], dtype=np.int32)
    threshold = np.array([r.get("threshold", 0.0) for r in rows])
    candidates = Candidates(
        server_id=np.array([r["id"] for r in rows], dtype=np.int64),
        gpus=gpus,
        floor=np.array([r.get("floor", 10.0) for r in rows]),
        threshold=threshold,
        rival_price=np.where(threshold > 0, threshold, np.nan),
        cap=cap_per_gpu_day * gpus,
        reliability=np.full(len(rows), 0.99),
        eligible=np.array([r.get("eligible", True) for r in rows], dtype=bool),
        observed_at=np.full(len(rows), NOW),
    )
    spec = TargetSpec(name="t", market=market, unit=unit, count=count, currency="CLORE-Blockchain",
                      cap_per_gpu_day=cap_per_gpu_day, fee_fraction=fee_fraction)
    return TargetView(now=NOW, target=spec, candidates=candidates, orders=orders,
                      usd_per_unit=usd_per_unit,
                      recent_wins=np.empty(0) if recent_wins is None else recent_wins)


def held(server_id: int, price: float, gpus: int = 1, state: str = "winning") -> OwnOrder:
    return OwnOrder(server_id, price, gpus, state, NOW - 3600, order_id=1000 + server_id)


def bids(decision) -> dict[int, float]:
    """A decision as {server id: price}, rounded for comparisons."""
    assert decision is not None
    return {b.server_id: round(b.price, 6) for b in decision}

"""Hand-built histories for the backtest engine's tests: dense per-tick arrays in, ``History`` out,
and GigaSPOT snapshots in the CDN's shape for the tests that go through the database."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import Field

from bidder.backtest.data import FLOOR, History, MarketHistory, WinVersions
from bidder.backtest.events import EventStream
from bidder.config import CLORE, Config, parse_config
from strategies import base
from strategies.base import DesiredBid, Strategy, TargetView

T0 = 1_700_000_000.0


def _stream(dense: dict[str, np.ndarray], initial: dict[str, np.ndarray]) -> EventStream:
    """Events wherever a column changes from one tick to the next (tick 0: from ``initial``)."""
    n_ticks = len(next(iter(dense.values())))
    changed = np.zeros(next(iter(dense.values())).shape, dtype=bool)
    for name, values in dense.items():
        before = np.vstack([initial[name][None, :], values[:-1]])
        same = (values == before) | (_isnan(values) & _isnan(before))
        changed |= ~same
    tick, row = np.nonzero(changed)
    return EventStream.build(n_ticks, tick, row, {c: v[tick, row] for c, v in dense.items()},
                             initial)


def _isnan(a: np.ndarray) -> np.ndarray:
    return np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, dtype=bool)


def history(rival: np.ndarray, *, step: float = 60.0, gpus: list[int] | None = None,
            floor: float | np.ndarray = 1.0, online: np.ndarray | None = None,
            rival_pl: float = 200.0, energy: float = 0.1, clore: float = 0.05,
            market: str = "gigaspot", model: str = "RTX 4090",
            new_bid_when_price_changes: bool = False, currency: str = CLORE) -> History:
    """``rival[t, i]``: the best rival's price on server ``i`` at tick ``t`` (NaN: none), and
    ``floor``, in ``currency``. A rival's id lasts while it bids without a break (or, when
    asked, while its price stays the same)."""
    rival = np.asarray(rival, dtype=np.float64)
    n_ticks, n = rival.shape
    gpus = gpus or [1] * n
    shape = (n_ticks, n)
    floors = np.broadcast_to(np.asarray(floor, dtype=np.float64), shape).copy()
    on = np.ones(shape, dtype=bool) if online is None else np.asarray(online, dtype=bool)
    facts = _stream({"gpus": np.broadcast_to(np.array(gpus, np.int32), shape).copy(),
                     "gpu_model": np.full(shape, model, dtype=object),
                     "country": np.full(shape, "DE", dtype=object),
                     "pl_min": np.full(shape, 100.0), "pl_max": np.full(shape, 450.0)},
                    {"gpus": np.zeros(n, np.int32), "gpu_model": np.full(n, "", dtype=object),
                     "country": np.full(n, "", dtype=object), "pl_min": np.full(n, np.nan),
                     "pl_max": np.full(n, np.nan)})
    state = _stream({"online": on, "rentable": on.copy(), "working_properly": on.copy(),
                     "reliability": np.full(shape, 0.99), "energy_price": np.full(shape, energy),
                     f"{FLOOR}{currency}": floors},
                    {"online": np.zeros(n, bool), "rentable": np.zeros(n, bool),
                     "working_properly": np.zeros(n, bool), "reliability": np.full(n, np.nan),
                     "energy_price": np.full(n, np.nan), f"{FLOOR}{currency}": np.full(n, np.nan)})
    bid_id = np.full(shape, -1, dtype=np.int64)
    birth = np.zeros(shape, dtype=np.int64)
    next_id = 1000
    for i in range(n):
        for t in range(n_ticks):
            if np.isnan(rival[t, i]):
                continue
            same = t > 0 and not np.isnan(rival[t - 1, i]) and \
                (not new_bid_when_price_changes or rival[t - 1, i] == rival[t, i])
            if same:
                bid_id[t, i], birth[t, i] = bid_id[t - 1, i], birth[t - 1, i]
            else:
                next_id += 1
                bid_id[t, i], birth[t, i] = next_id, t
    cap_hint = np.where(np.isnan(rival), np.nan, np.nanmax(np.where(np.isnan(rival), -np.inf, rival)
                                                            , axis=0, keepdims=True))
    rivals = _stream({"price": rival, "pl": np.where(np.isnan(rival), np.nan, rival_pl),
                      "bid_id": bid_id, "birth": birth, "cap_hint": cap_hint},
                     {"price": np.full(n, np.nan), "pl": np.full(n, np.nan),
                      "bid_id": np.full(n, -1, np.int64), "birth": np.zeros(n, np.int64),
                      "cap_hint": np.full(n, np.nan)})
    empty = np.empty(0, dtype=np.int64)
    data = MarketHistory(market, np.arange(1, n + 1, dtype=np.int64), facts, state, rivals,
                         WinVersions(empty, empty, empty, np.empty(0)))
    time = T0 + step * np.arange(n_ticks)
    return History(time, np.full(n_ticks, clore), (), np.full(n_ticks, -1, np.int64),
                   {market: data})


def config(*, count: int = 1, cap: float = 100.0, allocation: str = "highest_price",
           fee: float = 0.0, creation_fee: float = 0.0, market: str = "gigaspot",
           decide_interval: float = 60.0, **rules: Any) -> Config:
    target: dict[str, Any] = {"name": "t", "market": market, "count": count,
                              "max_price_per_gpu_day": cap}
    if market == "gigaspot":
        target["oc"] = {"pl": 200}
    market_rules = {"fee_fraction": fee, "creation_fee": creation_fee, **rules}
    return parse_config({"bot": {"decide_interval": decide_interval},
                         "markets": {"spot": market_rules,
                                     "gigaspot": {**market_rules, "allocation": allocation}},
                         "targets": [target]})


# --- snapshots through the database -------------------------------------------------------------


def machine(bids: list[dict[str, Any]], *, gpus: int = 1, min_bid: float = 1.0,
            model: str = "RTX 4090") -> dict[str, Any]:
    """One machine of a CDN snapshot."""
    gpu = {"pl": [100, 450], "mem_lock": [405, 10501], "core_lock": [210, 2450],
           "mem_offset": [-2000, 2000], "core_offset": [-1000, 200], "model": model}
    return {"bids": bids, "on_demand_rented": False, "online": True, "cpu": "cpu", "cores": 8,
            "threads": 16, "ram": 64.0, "gpus": [gpu] * gpus, "working_properly": True,
            "cuda": "12.2", "max_rental_length": 864000, "cc": "DE", "host": 1,
            "reliability": 0.99, "min_bid": min_bid, "energy_price": 0.1}


def bid(bid_id: int, owner: int, price: float, *, active: bool = False) -> dict[str, Any]:
    return {"owner": owner, "id": bid_id, "active": active, "to_cache": True, "cached": False,
            "price": price, "currency": CLORE, "pl": 200}


def encode(snapshot: dict[str, Any]) -> bytes:
    return json.dumps(snapshot).encode()


# --- a strategy for the tests --------------------------------------------------------------------


class Hold(Strategy):
    """Holds server ``server`` at ``price`` per day; from ``after`` (UNIX time) on at ``then``,
    and also server ``add`` (0: none) at ``price``."""

    name = "hold"

    class Params(base.Params):
        server: int = 1
        price: float = Field(gt=0)
        after: float = float("inf")
        then: float = 1.0
        add: int = 0

    def decide(self, view: TargetView, **kwargs: Any) -> list[DesiredBid]:
        p = self.params
        if view.now < p.after:
            return [DesiredBid(p.server, p.price)]
        return [DesiredBid(p.server, p.then)] + ([DesiredBid(p.add, p.price)] if p.add else [])

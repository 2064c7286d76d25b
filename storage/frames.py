"""``MarketFrame``: one market at one moment, in columns.

The single in-memory shape of "what the market looked like": storage builds it from the latest
records for the live bot, the backtester builds one per replayed tick, and the view builder turns it
into a strategy's ``TargetView``. Columns are numpy arrays aligned by server, with the bids of all
servers in one CSR block (``bid_start[i]:bid_start[i+1]`` are server ``i``'s bids), so a tick costs
a few vector operations and no per-bid Python objects.

Prices are per server per day. GigaSPOT prices and ``min_bid`` are CLORE per day; spot bids are in
the currency of the offer: ``bid_currency`` where the reply stated it, else (the documented reply
states none) taken to be our order's currency. ``bid_prices_in`` converts them with the frame's
own rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MARKETS = ("spot", "gigaspot")


@dataclass(frozen=True, slots=True, eq=False)
class MarketFrame:
    market: str
    """``"spot"`` or ``"gigaspot"``."""
    time: float
    """When this frame was observed (snapshot time or newest poll time), UNIX seconds."""
    clore_usd: float
    """USD per CLORE (``clore_price``); NaN when unknown."""
    rates_usd: Mapping[str, float]
    """USD per unit of each currency, as the API gave them (``currency_rates_in_usd``)."""

    # --- per server (n) ---
    server_id: np.ndarray
    """int64"""
    gpus: np.ndarray
    """int32: number of GPUs"""
    gpu_model: np.ndarray
    """object (str): model of the first GPU, e.g. ``"RTX 4090"``"""
    country: np.ndarray
    """object (str): ISO alpha-2, ``""`` when unknown"""
    reliability: np.ndarray
    """float64 in 0..1; NaN when unknown"""
    online: np.ndarray
    """bool"""
    rentable: np.ndarray
    """bool: can take an order now (visible / public, ``max_rental_length > 0``, not rented on demand)"""
    working_properly: np.ndarray
    """bool"""
    energy_price: np.ndarray
    """float64 USD/kWh; NaN on spot"""
    pl_min: np.ndarray
    """float64: lowest power limit every GPU accepts (max of the GPUs' minimums); NaN on spot"""
    pl_max: np.ndarray
    """float64: highest power limit every GPU accepts (min of the GPUs' maximums); NaN on spot"""
    observed_at: np.ndarray
    """float64: when this server's row was last observed (spot servers are polled one by one)"""
    floors: Mapping[str, np.ndarray]
    """currency -> float64 floor per server-day; NaN where the currency is not accepted"""

    # --- bids (m), CSR by server ---
    bid_start: np.ndarray
    """int64, length n + 1"""
    bid_id: np.ndarray
    """int64: order / offer id"""
    bid_owner: np.ndarray
    """int64: owner user id, -1 when unknown (spot)"""
    bid_price: np.ndarray
    """float64: price per server-day"""
    bid_pl: np.ndarray
    """float64: power limit in watts (GigaSPOT); NaN on spot"""
    bid_active: np.ndarray
    """bool: this bid currently holds the server"""
    bid_mine: np.ndarray
    """bool: this bid is ours"""
    bid_currency: np.ndarray | None = None
    """object (str): the currency each spot offer states (``""`` or None: unsaid); None when no
    offer of the frame states one"""

    index: dict[int, int] = field(default_factory=dict, repr=False)
    """server id -> row; filled in ``__post_init__``."""

    def __post_init__(self) -> None:
        n = len(self.server_id)
        if len(self.bid_start) != n + 1:
            raise ValueError(f"bid_start has {len(self.bid_start)} entries for {n} servers")
        object.__setattr__(self, "index", {int(s): i for i, s in enumerate(self.server_id.tolist())})

    @property
    def n_servers(self) -> int:
        return len(self.server_id)

    def row(self, server_id: int) -> int | None:
        return self.index.get(int(server_id))

    def bids_of(self, row: int) -> slice:
        return slice(int(self.bid_start[row]), int(self.bid_start[row + 1]))

    def bid_server_rows(self) -> np.ndarray:
        """For every bid, the row of its server (int64, length m)."""
        return np.repeat(np.arange(self.n_servers, dtype=np.int64), np.diff(self.bid_start))

    def floor(self, currency: str) -> np.ndarray:
        """Floors in ``currency``; NaN for every server when the currency is not offered."""
        f = self.floors.get(currency)
        return f if f is not None else np.full(self.n_servers, np.nan)

    def usd_rate(self, currency: str) -> float:
        """USD per unit of ``currency`` from the API's own rates; NaN when unknown."""
        return usd_per_unit(currency, self.rates_usd, self.clore_usd)

    def bid_prices_in(self, currency: str) -> np.ndarray:
        """Every bid's price in ``currency``, converted with the frame's rates where the bid
        states another currency; NaN (unknown, never cheap) where a rate is missing. Bids that
        state no currency are taken to be in ``currency``."""
        if self.bid_currency is None:
            return self.bid_price
        stated = self.bid_currency
        other = np.array([bool(c) and c != currency for c in stated.tolist()], dtype=bool)
        if not other.any():
            return self.bid_price
        to = self.usd_rate(currency)
        factor = np.ones(len(stated))
        for name in {c for c in stated[other].tolist()}:
            rate = self.usd_rate(name)
            ok = 0 < rate < np.inf and 0 < to < np.inf
            factor[stated == name] = rate / to if ok else np.nan
        return self.bid_price * factor


def usd_per_unit(currency: str, rates_usd: Mapping[str, float], clore_usd: float) -> float:
    """USD per unit of ``currency``: the API's ``currency_rates_in_usd``, else 1 for USD and
    ``clore_price`` for CLORE; NaN when unknown."""
    if currency.upper() in ("USD", "USD-BLOCKCHAIN") and currency not in rates_usd:
        return 1.0
    if currency == "CLORE-Blockchain" and currency not in rates_usd:
        return clore_usd
    return float(rates_usd.get(currency, np.nan))


def empty_frame(market: str, time: float) -> MarketFrame:
    """A frame with no servers: what the bot sees before its first poll."""
    f64 = np.empty(0, dtype=np.float64)
    return MarketFrame(
        market=market,
        time=time,
        clore_usd=float("nan"),
        rates_usd={},
        server_id=np.empty(0, dtype=np.int64),
        gpus=np.empty(0, dtype=np.int32),
        gpu_model=np.empty(0, dtype=object),
        country=np.empty(0, dtype=object),
        reliability=f64,
        online=np.empty(0, dtype=bool),
        rentable=np.empty(0, dtype=bool),
        working_properly=np.empty(0, dtype=bool),
        energy_price=f64,
        pl_min=f64,
        pl_max=f64,
        observed_at=f64,
        floors={},
        bid_start=np.zeros(1, dtype=np.int64),
        bid_id=np.empty(0, dtype=np.int64),
        bid_owner=np.empty(0, dtype=np.int64),
        bid_price=f64,
        bid_pl=f64,
        bid_active=np.empty(0, dtype=bool),
        bid_mine=np.empty(0, dtype=bool),
    )

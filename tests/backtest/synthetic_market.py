"""A seeded, varied GigaSPOT recording written straight into the recorder's tables.

For the decision-regression test: it must exercise every branch the backtest's loader and hot path
take (several GPU models and countries, facts that change, machines leaving the snapshot, offline
and on-demand-rented spells, power-limit ranges our ``pl`` misses, our own bids, bids in another
currency, rival bids under the floor, unknown CLORE rates), while depending on nothing but numpy's
seeded generator and the table layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from bidder.backtest.data import History
from bidder.config import CLORE
from storage.bulk import executemany
from storage.db import open_database
from storage.models import BIDS, FACTS, STATES, Currency, GigaspotSnapshot

T0 = 1_735_000_000
ME = 77
MODELS = ("RTX 4090", "RTX 3090", "A100 80GB")
COLUMNS = {  # of the rows written below, in their order
    FACTS.name: ("machine_id first_snapshot end_snapshot gpus gpu_count gpu_model cc pl_min "
                 "pl_max").split(),
    STATES.name: ("machine_id first_snapshot end_snapshot online on_demand_rented "
                  "working_properly reliability min_bid max_rental_length energy_price").split(),
    BIDS.name: ("machine_id bid_id first_snapshot end_snapshot owner active price currency_id "
                "pl").split(),
}
COUNTRIES = ("DE", "US", "FR")


def _spans(rng: np.random.Generator, n: int, p: float) -> list[tuple[int, int | None]]:
    """Consecutive (first, end) snapshot-id spans covering 1..n, changing with probability ``p``."""
    k = rng.binomial(n - 1, p)
    points = np.sort(rng.choice(np.arange(2, n + 1), size=k, replace=False)).tolist()
    return list(zip([1, *points], [*points, None]))


def write_market(path: Path, *, snapshots: int, machines: int, seed: int,
                 tie_prone: bool = False) -> None:
    """``tie_prone``: bids on a few price levels and power limits, and a CLORE rate swinging
    across the rates where they swap places under ``host_profit``."""
    rng = np.random.default_rng(seed)
    with open_database(f"sqlite:///{path}", writer=True) as db, db.sessions.begin() as session:
        connection = session.connection()
        session.execute(insert(Currency).values(id=1, name=CLORE))
        session.execute(insert(Currency).values(id=2, name="bitcoin"))
        clore = 0.5 * (1 + 0.8 * np.sin(np.arange(snapshots) / 25.0)) if tie_prone else \
            0.03 * (1 + 0.2 * np.sin(np.arange(snapshots) / 90.0))
        unknown = rng.random(snapshots) < 0.02
        executemany(connection, insert(GigaspotSnapshot.__table__),
                    ("id", "time", "fetched_at", "recorded_at", "source", "sha256", "clore_price",
                     "my_user_id", "machines"),
                    [(i + 1, T0 + 60 * i, T0 + 60 * i, T0 + 60 * i, "synthetic", f"{i:064x}",
                      None if unknown[i] else float(clore[i]), ME, machines)
                     for i in range(snapshots)])
        facts, states, bids = [], [], []
        next_bid = 1_000_000
        for machine in range(20_000, 20_000 + machines):
            gpus = int(rng.choice([1, 2, 4, 8]))
            model = str(rng.choice(MODELS, p=[0.6, 0.3, 0.1]))
            country = str(rng.choice(COUNTRIES))
            pl_min, pl_max = (150.0, 450.0) if rng.random() < 0.85 else (250.0, 400.0)
            fact_spans = _spans(rng, snapshots, 0.002)
            for k, (first, end) in enumerate(fact_spans):
                count = gpus if k % 2 == 0 else max(1, gpus // 2)  # a card pulled, then back
                facts.append((machine, first, end, "[]", count, model, country, pl_min, pl_max))
            energy = float(rng.choice([0.05, 0.08, 0.12, 0.2]))
            floor = float(rng.uniform(2, 6)) * gpus
            for first, end in _spans(rng, snapshots, 0.03):
                if end is not None and rng.random() < 0.15:
                    continue  # away from the snapshot for this span
                states.append((machine, first, end, bool(rng.random() < 0.9),
                               bool(rng.random() < 0.05), bool(rng.random() < 0.95),
                               float(rng.uniform(0.85, 1.0)), floor * float(rng.uniform(0.8, 1.2)),
                               0 if rng.random() < 0.03 else 864_000, energy))
            for _slot in range(int(rng.integers(0, 5))):
                price = floor * float(rng.uniform(0.8, 2.2))
                owner = ME if rng.random() < 0.08 else int(rng.integers(1000, 1050))
                currency = 2 if rng.random() < 0.05 else 1
                pl = float(rng.choice([150, 300] if tie_prone else [150, 200, 300, 400]))
                for first, end in _spans(rng, snapshots, 0.05):
                    if end is not None and rng.random() < 0.1:
                        continue  # the bid is away for this span
                    if rng.random() < 0.3:
                        next_bid += 1
                    price = max(0.5, price * float(rng.uniform(0.85, 1.15)))
                    if tie_prone:
                        price = round(floor) * float(rng.choice([1.0, 1.25, 1.5, 2.0]))
                    bids.append((machine, next_bid, first, end, owner, bool(rng.random() < 0.3),
                                 round(price, 4), currency, pl))
                next_bid += 1
        for table, rows in ((FACTS, facts), (STATES, states), (BIDS, bids)):
            executemany(connection, insert(table), COLUMNS[table.name], rows)


def digest(*parts: Any) -> str:
    """sha256 of arrays (their bytes; object arrays by value) and of other values' reprs."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(repr(part.tolist()).encode() if part.dtype == object else part.tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def history_digest(history: History) -> str:
    """A digest of everything a loaded history holds."""
    parts: list[Any] = [history.time, history.clore_usd, history.rates_index, history.rates,
                        history.my_user_ids]
    for name in sorted(history.markets):
        m = history.markets[name]
        parts += [name, m.server_id, m.wins.row, m.wins.first, m.wins.last, m.wins.price_per_gpu]
        for stream in (m.facts, m.state, m.rivals):
            parts += [stream.start, stream.row]
            for column in sorted(stream.initial):
                parts += [column, stream.initial[column], stream.values[column]]
    return digest(*parts)

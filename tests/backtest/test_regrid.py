"""A history put on a finer grid: at every fine tick, the market of the newest coarse tick."""

from __future__ import annotations

import numpy as np
import pytest

from bidder.backtest.data import WinVersions, load_history
from bidder.backtest.events import EventStream
from bidder.backtest.market import ReplayMarket
from bidder.backtest.regrid import regrid_stream, regrid_wins, tick_map
from bidder.config import parse_config
from storage.db import open_database
from synthetic_market import T0, write_market

COARSE = np.array([100.0, 160.0, 220.0])
FINE = np.array([100.0, 130.0, 160.0, 170.0, 190.0, 220.0, 250.0])


def columns_by_tick(stream: EventStream) -> list[list[float]]:
    cols = stream.current()
    out = []
    for t in range(stream.n_ticks):
        stream.apply(t, cols)
        out.append(cols["price"].tolist())
    return out


def test_every_fine_tick_sees_the_newest_coarse_tick():
    stream = EventStream.build(3, np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]),
                               {"price": np.array([1.0, 2.0, 5.0, 6.0])},
                               {"price": np.zeros(2)})
    where = tick_map(COARSE, FINE)
    assert where.tolist() == [0, 2, 5]
    fine = regrid_stream(stream, where, len(FINE))
    coarse = columns_by_tick(stream)
    newest = np.searchsorted(COARSE, FINE, side="right") - 1
    assert columns_by_tick(fine) == [coarse[k] for k in newest]


def test_a_winning_version_holds_until_the_next_coarse_tick():
    wins = WinVersions(np.array([0, 1]), np.array([0, 1]), np.array([0, 2]), np.array([1.0, 2.0]))
    fine = regrid_wins(wins, tick_map(COARSE, FINE), len(FINE))
    assert fine.first.tolist() == [0, 2] and fine.last.tolist() == [1, 6]


def test_the_fine_grid_must_contain_the_coarse_one():
    with pytest.raises(ValueError, match="must contain every tick"):
        tick_map(COARSE, np.array([100.0, 161.0, 220.0]))


def test_a_history_loaded_with_extra_ticks_shows_the_newest_snapshot_at_each(tmp_path):
    path = tmp_path / "h.db"
    write_market(path, snapshots=40, machines=12, seed=3)
    targets = parse_config({"targets": [{"name": "any", "market": "gigaspot", "count": 2,
                                         "max_price_per_gpu_day": 20,
                                         "oc": {"pl": 200}}]}).targets
    with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
        coarse = load_history(session, targets, allocation="host_profit")
        extra = coarse.time[:-1] + np.diff(coarse.time) * np.array([0.25, 0.5] * 20)[:39]
        fine = load_history(session, targets, allocation="host_profit", extra_times=extra)
    assert len(fine.time) == len(coarse.time) + len(np.unique(extra)) and fine.time[0] >= T0
    newest = np.searchsorted(coarse.time, fine.time, side="right") - 1
    assert np.array_equal(fine.clore_usd, coarse.clore_usd[newest], equal_nan=True)
    a = ReplayMarket(coarse, coarse.markets["gigaspot"])
    b = ReplayMarket(fine, fine.markets["gigaspot"])
    for j, k in enumerate(newest.tolist()):
        a.advance(k)
        b.advance(j)
        for name in ("facts", "state", "rivals"):
            mine, theirs = getattr(b, name), getattr(a, name)
            for column, values in theirs.items():
                assert np.array_equal(mine[column], values, equal_nan=values.dtype.kind == "f"), \
                    (j, name, column)

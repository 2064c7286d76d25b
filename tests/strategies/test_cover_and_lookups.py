"""The fast paths of the strategy helpers give what their plain versions give.

``cheapest_cover`` is exact (a prefix of the cost-per-unit order, else a knapsack over few rows),
checked against brute force on random small instances; ``Candidates`` looks ids up through a sorted
index it remembers, checked against a scan, with repeated ids.
"""

import numpy as np
import pytest

from strategies.base import Candidates, cheapest_cover


def brute_force_cover(need, size, cost):
    """The cheapest cover by trying every subset of the usable rows: (cost, units) of the best,
    or of every usable row when they cannot reach ``need``."""
    usable = [i for i in range(len(size)) if np.isfinite(cost[i]) and size[i] > 0]
    best = None
    for mask in range(1 << len(usable)):
        chosen = [usable[k] for k in range(len(usable)) if mask >> k & 1]
        units = int(sum(size[i] for i in chosen))
        if units < need:
            continue
        key = (round(float(sum(cost[i] for i in chosen)), 9), units)
        if best is None or key < best:
            best = key
    if best is None:
        return (round(float(sum(cost[i] for i in usable)), 9),
                int(sum(size[i] for i in usable)))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_cheapest_cover_is_as_cheap_as_brute_force(seed):
    """Random small instances with ties, zero sizes and unusable rows: the cover costs what the
    cheapest subset costs, and of equal-cost covers holds the fewest units."""
    rng = np.random.default_rng(seed)
    for _ in range(400):
        n = int(rng.integers(0, 13))
        size = rng.choice([0, 1, 2, 3, 4, 8], n)
        if rng.random() < 0.5:  # few cost levels: ties in cost and in cost per unit
            cost = rng.choice([1.0, 2.0, 4.0, 8.0], n) * np.maximum(size, 1)
        else:
            cost = rng.uniform(0.0, 50.0, n)
        cost[rng.random(n) < 0.2] = rng.choice([np.inf, -np.inf, np.nan])
        need = int(rng.integers(1, 20))
        rows = cheapest_cover(need, size, cost)
        assert len(set(rows.tolist())) == len(rows)
        assert np.isfinite(cost[rows]).all()
        got = (round(float(cost[rows].sum()), 9), int(size[rows].sum()))
        assert got == brute_force_cover(need, size, cost), (need, size, cost, rows)


def test_cheapest_cover_beats_the_greedy_choice():
    """Greedy by cost per unit fills 12 of 16 GPUs with the cheap small servers and then has to
    overshoot with the 8-GPU one (200 for 20 GPUs); the cheapest cover leaves one 4 out (160)."""
    size = np.array([2, 4, 8, 2, 4])
    cost = np.array([18.0, 36.0, 88.0, 18.0, 40.0])
    rows = cheapest_cover(16, size, cost)
    assert sorted(rows.tolist()) == [0, 1, 2, 3]
    assert float(cost[rows].sum()) == 160.0


def candidates(ids):
    ids = np.asarray(ids, dtype=np.int64)
    nan = np.full(len(ids), np.nan)
    return Candidates(server_id=ids, gpus=np.ones(len(ids), np.int32), floor=nan,
                      threshold=nan, rival_price=nan, cap=nan, reliability=nan,
                      eligible=np.ones(len(ids), bool), observed_at=nan)


@pytest.mark.parametrize("ids", [[3, 7, 9, 20], [20, 3, 9, 7, 9], [], [5]])
def test_rows_are_found_as_a_scan_finds_them(ids):
    c = candidates(ids)
    asked = [3, 9, 20, 4, 5, 7, 2**70, 9]
    first = {sid: ids.index(sid) for sid in ids}
    expected = [ids.index(sid) if sid in ids else None for sid in asked]
    assert [c.row(sid) for sid in asked] == expected
    assert [c.row(sid) for sid in asked] == expected  # once remembered, the same
    ints = [sid for sid in asked if sid < 2**62]
    assert candidates(ids).rows_of(ints).tolist() == [first.get(sid, -1) for sid in ints]

"""The fast paths of the strategy helpers give what their plain versions give.

``cheapest_cover`` sorts once and walks its greedy runs in Python, and ``Candidates`` looks ids up
through a sorted index it remembers; both are checked here against the straightforward code they
replaced, on many random inputs with ties, zero sizes, unusable rows and repeated ids.
"""

import numpy as np
import pytest

from strategies.base import Candidates, cheapest_cover


def plain_cover(need, size, cost):
    """``cheapest_cover`` as first written: a two-key sort and vector passes over every row."""
    usable = np.flatnonzero(np.isfinite(cost))
    sizes = size[usable].astype(np.int64)
    costs = cost[usable]
    order = np.lexsort((-sizes, costs / np.maximum(sizes, 1)))
    rows, s, c = usable[order], sizes[order], costs[order]
    free = np.ones(len(rows), dtype=bool)
    chosen, spent, left = [], 0.0, int(need)
    best_cost, best = np.inf, None
    while left > 0:
        covers = np.flatnonzero(free & (s >= left))
        if len(covers):
            i = int(covers[np.argmin(c[covers])])
            if spent + c[i] < best_cost:
                best_cost, best = spent + c[i], [*chosen, i]
        fits = np.flatnonzero(free & (s <= left))
        if not len(fits):
            break
        run = fits[np.cumsum(s[fits]) <= left]
        free[run] = False
        chosen.extend(run.tolist())
        spent += float(c[run].sum())
        left -= int(s[run].sum())
    if left <= 0 and spent < best_cost:
        best = chosen
    return rows[best if best is not None else chosen]


@pytest.mark.parametrize("seed", range(4))
def test_cheapest_cover_chooses_what_the_plain_version_chooses(seed):
    rng = np.random.default_rng(seed)
    for _ in range(2000):
        n = int(rng.integers(0, 60))
        size = rng.choice([0, 1, 2, 4, 8], n)
        if rng.random() < 0.5:  # few cost levels: ties in cost and in cost per unit
            cost = rng.choice([1.0, 2.0, 4.0, 8.0], n) * np.maximum(size, 1)
        else:
            cost = rng.uniform(-1.0, 50.0, n)
        cost[rng.random(n) < 0.2] = rng.choice([np.inf, -np.inf, np.nan])
        need = int(rng.integers(1, 30))
        np.testing.assert_array_equal(cheapest_cover(need, size, cost),
                                      plain_cover(need, size, cost))


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

"""The fill model on hand-built books: who wins, ties, floors, what is paid."""

import numpy as np
import pytest

from bidder.backtest.fills import Book, fill, marginal_price


def book(rival, *, floor=1.0, can_win=True, gpus=1, energy=0.1, rival_pl=200.0, rival_birth=0):
    rival = np.atleast_1d(np.asarray(rival, dtype=np.float64))
    k = len(rival)
    return Book(floor=np.full(k, floor), can_win=np.full(k, can_win), gpus=np.full(k, gpus),
                energy_price=np.full(k, energy), rival_price=rival,
                rival_pl=np.full(k, rival_pl), rival_birth=np.full(k, rival_birth))


def run(b, price, *, birth=5, rule="highest_price", payment="pay_your_bid", pl=200.0, clore=0.05):
    return fill(rule, payment, b, price=np.atleast_1d(np.asarray(price, dtype=float)),
                birth=np.full(len(b.floor), birth), our_pl=pl, clore_usd=clore)


def test_highest_price_the_higher_bid_wins_and_pays_its_bid():
    f = run(book([5.0, 5.0]), [6.0, 4.0])
    assert f.win.tolist() == [True, False]
    assert f.paid.tolist() == [6.0, 0.0]
    assert f.marginal.tolist() == [5.0, 5.0]


def test_ties_go_to_the_earlier_bid():
    older_rival = run(book(5.0, rival_birth=3), 5.0, birth=5)
    newer_rival = run(book(5.0, rival_birth=8), 5.0, birth=5)
    same_tick = run(book(5.0, rival_birth=5), 5.0, birth=5)
    assert not older_rival.win[0] and newer_rival.win[0] and not same_tick.win[0]


def test_floor_and_availability_decide_before_price():
    assert not run(book(np.nan, floor=3.0), 2.9).win[0]
    assert run(book(np.nan, floor=3.0), 3.0).win[0]
    assert not run(book(np.nan, can_win=False), 9.0).win[0]
    # a rival under the floor cannot win, so it does not count
    f = run(book(2.0, floor=3.0), 3.0)
    assert f.win[0] and f.marginal[0] == 3.0


def test_host_profit_a_lower_power_limit_wins_at_a_lower_price():
    # 4 GPUs at 0.1 $/kWh: each 100 W of power limit costs the host 0.96 $/day = 19.2 CLORE/day
    b = book(100.0, gpus=4, rival_pl=300.0)
    f = run(b, 90.0, rule="host_profit", pl=200.0)
    assert f.win[0]
    assert f.marginal[0] == pytest.approx(100.0 - 19.2)
    assert not run(b, 80.0, rule="host_profit", pl=200.0).win[0]
    assert not run(b, 100.0, rule="highest_price").win[0]


@pytest.mark.parametrize("clore, energy", [(np.nan, 0.1), (0.05, np.nan)])
def test_host_profit_a_bid_alone_wins_even_where_its_score_is_unknown(clore, energy):
    # no CLORE rate recorded, or no energy price: the exchange still gives a lone bid its server
    alone = run(book(np.nan, energy=energy), 5.0, rule="host_profit", clore=clore)
    assert alone.win[0] and alone.paid[0] == 5.0 and alone.marginal[0] == 1.0
    closed = run(book(np.nan, energy=energy, can_win=False), 5.0, rule="host_profit", clore=clore)
    assert not closed.win[0] and closed.paid[0] == 0.0
    under_floor = run(book(np.nan, energy=energy, floor=6.0), 5.0, rule="host_profit", clore=clore)
    assert not under_floor.win[0]
    # against a rival, an unknown score still cannot be ranked: it does not win
    assert not run(book(4.0, energy=energy), 5.0, rule="host_profit", clore=clore).win[0]


def test_second_price_pays_what_it_takes_to_win():
    f = run(book(5.0, floor=2.0), 9.0, payment="second_price")
    assert f.win[0] and f.paid[0] == 5.0
    alone = run(book(np.nan, floor=2.0), 9.0, payment="second_price")
    assert alone.paid[0] == 2.0


def test_marginal_price_is_nan_where_nothing_can_win():
    m = marginal_price("highest_price", book([4.0, 4.0], can_win=True), 200.0, 0.05)
    assert m.tolist() == [4.0, 4.0]
    assert np.isnan(marginal_price("highest_price", book(4.0, can_win=False), 200.0, 0.05)[0])


def plain_fill(rule, payment, b, price, birth, pl, clore):
    """The fill rule written out straight from the module docstring, for comparison."""
    def score(p, bid_pl):
        if rule == "highest_price":
            return p
        return p * clore - bid_pl * b.gpus * 24.0 / 1000.0 * b.energy_price

    ours, theirs = score(price, pl), score(b.rival_price, b.rival_pl)
    rival = b.rival_price >= b.floor
    beats = (ours > theirs) | ((ours == theirs) & (b.rival_birth > birth))
    win = b.can_win & (price >= b.floor) & (~rival | beats)
    if rule == "highest_price":
        tie = theirs
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            tie = (theirs + pl * b.gpus * 24.0 / 1000.0 * b.energy_price) / clore
    marginal = np.where(b.can_win, np.maximum(b.floor, np.where(rival, tie, 0.0)), np.nan)
    charged = price if payment == "pay_your_bid" else np.minimum(price, marginal)
    return win, marginal, np.where(win, charged, 0.0)


@pytest.mark.parametrize("rule", ["highest_price", "host_profit"])
@pytest.mark.parametrize("payment", ["pay_your_bid", "second_price"])
def test_fills_are_the_plain_rule_exactly_also_with_unknowns_and_ties(rule, payment):
    rng = np.random.default_rng(3)
    k = 400
    levels = np.array([4.0, 5.0, 6.0, np.nan])  # few levels: equal scores happen
    b = Book(floor=rng.choice(levels, k), can_win=rng.random(k) < 0.8,
             gpus=rng.choice([1, 2, 4], k), energy_price=rng.choice([0.05, 0.1, np.nan], k),
             rival_price=rng.choice(levels, k), rival_pl=rng.choice([150.0, 200.0, np.nan], k),
             rival_birth=rng.integers(0, 4, k))
    price, birth = rng.choice(levels, k), rng.integers(0, 4, k)
    pl = rng.choice([150.0, 200.0], k)
    for clore in (0.05, 0.0, np.nan):
        got = fill(rule, payment, b, price=price, birth=birth, our_pl=pl, clore_usd=clore)
        for mine, plain in zip((got.win, got.marginal, got.paid),
                               plain_fill(rule, payment, b, price, birth, pl, clore)):
            np.testing.assert_array_equal(mine, plain)

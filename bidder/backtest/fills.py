"""The fill model: at each tick, do our orders win their servers, and what do they pay?

Each server's book is its best rival (``bidder.backtest.data``) plus at most one order of ours. The
allocation rule is ``bidder.allocation``'s: the highest score at or above the floor wins on a server
that can be won now (online, rentable, a known floor); equal scores go to the earlier bid, so a
rival seen before our order was created keeps the server at an equal score. With no rival at or
above the floor, our bid at or above it wins, even where its score is unknown (no CLORE rate). A
winner pays its own price (``pay_your_bid``) or the lowest price that would still have won
(``second_price``: the price that ties the best rival, at least the floor).

The *marginal* price of a server is that lowest winning price, ``max(floor, threshold)``: no order
can hold the server for less, whatever it bid. It is what overpay and the oracle are measured from.
Everything here is vectorised over our orders.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bidder.allocation import bid_scores, power_cost_usd_per_day, price_for_score

PAYMENTS = ("pay_your_bid", "second_price")


@dataclass(frozen=True, slots=True)
class Book:
    """The market around each of our orders (aligned arrays, one entry per order)."""

    floor: np.ndarray
    """float64: floor in the order currency; NaN where the server does not take it"""
    can_win: np.ndarray
    """bool: online and rentable now"""
    gpus: np.ndarray
    energy_price: np.ndarray
    """float64 USD/kWh (GigaSPOT; NaN on spot)"""
    rival_price: np.ndarray
    """float64: the best rival's price; NaN when no rival"""
    rival_pl: np.ndarray
    rival_birth: np.ndarray
    """int64: tick the rival bid was first seen"""


@dataclass(frozen=True, slots=True)
class Fill:
    win: np.ndarray
    """bool: the order holds its server"""
    marginal: np.ndarray
    """float64: the lowest price that wins the server now (NaN where it cannot be won)"""
    paid: np.ndarray
    """float64: price per day paid while holding (0 where not holding)"""


def threshold(rule: str, book: Book, our_pl: np.ndarray | float, clore_usd: float,
              rival_score: np.ndarray | None = None) -> np.ndarray:
    """The price at which our bid ties the best rival (0 where there is none)."""
    if rival_score is None:
        rival_score = bid_scores(rule, book.rival_price, book.rival_pl, book.gpus,
                                 book.energy_price, clore_usd)
    tie = price_for_score(rule, rival_score, our_pl, book.gpus, book.energy_price, clore_usd)
    return np.where(book.rival_price >= book.floor, tie, 0.0)


def marginal_price(rule: str, book: Book, our_pl: np.ndarray | float, clore_usd: float,
                   rival_score: np.ndarray | None = None) -> np.ndarray:
    """``max(floor, threshold)``; NaN where the server cannot be won now or the price is unknown.
    Rivals under the floor cannot win, so they do not count."""
    m = np.maximum(book.floor, threshold(rule, book, our_pl, clore_usd, rival_score))
    return np.where(book.can_win, m, np.nan)


def fill(rule: str, payment: str, book: Book, *, price: np.ndarray, birth: np.ndarray,
         our_pl: np.ndarray | float, clore_usd: float) -> Fill:
    """Who wins each of our orders' servers now: us (``price``, created at tick ``birth``, power
    limit ``our_pl``: NaN on spot) or the best rival; and what we pay per day while we hold."""
    return contest(rule, payment, book, price=price, birth=birth, our_pl=our_pl).at(clore_usd)


def contest(rule: str, payment: str, book: Book, *, price: np.ndarray, birth: np.ndarray,
            our_pl: np.ndarray | float) -> Contest:
    """Our orders against their books (see ``fill``), as far as the CLORE rate does not matter."""
    if payment not in PAYMENTS:
        raise ValueError(f"unknown payment rule {payment!r}; expected one of {PAYMENTS}")
    gpus, energy = book.gpus, book.energy_price
    rival = book.rival_price >= book.floor
    return Contest(rule, payment, book, our_pl,
                   np.asarray(power_cost_usd_per_day(our_pl, gpus, energy)),
                   np.asarray(power_cost_usd_per_day(book.rival_pl, gpus, energy)),
                   rival, ~rival, np.where(book.can_win, book.floor, np.nan),
                   price, book.can_win & (price >= book.floor), book.rival_birth > birth)


@dataclass(frozen=True, slots=True)
class Contest:
    """All of a fill that does not change with the CLORE rate: ``at(rate)`` fills at one rate
    with a few vector operations. Under ``host_profit`` the rate moves every tick while our
    orders and their servers mostly stand still, so a run works the rest out only when they move
    (``priced`` when only our prices did)."""

    rule: str
    payment: str
    book: Book
    our_pl: np.ndarray | float
    our_power: np.ndarray
    """What powering our bids costs the host per day (``host_profit``; NaN on spot)"""
    rival_power: np.ndarray
    rival: np.ndarray
    """bool: the best rival competes (it bids at least the floor)"""
    alone: np.ndarray
    """bool: ``~rival``"""
    open_floor: np.ndarray
    """float64: the floor where the server can be won now, NaN elsewhere"""
    price: np.ndarray
    open: np.ndarray
    """bool: the server can be won now, at our price"""
    later: np.ndarray
    """bool: the rival came after our order, so an equal score goes to us"""

    def priced(self, price: np.ndarray, birth: np.ndarray) -> Contest:
        """The same orders on the same servers at other prices (and creation ticks)."""
        b = self.book
        return replace(self, price=price, open=b.can_win & (price >= b.floor),
                       later=b.rival_birth > birth)

    def at(self, clore_usd: float) -> Fill:
        b = self.book
        ours = bid_scores(self.rule, self.price, self.our_pl,  # type: ignore[arg-type]
                          b.gpus, b.energy_price, clore_usd, power=self.our_power)
        theirs = bid_scores(self.rule, b.rival_price, b.rival_pl, b.gpus, b.energy_price,
                            clore_usd, power=self.rival_power)
        # NaN comparisons are False: no floor, or an unknown score against a rival, never wins;
        # a rival that came after our order loses an equal score. A bid alone on an open server
        # wins whatever its score: the exchange needs no CLORE rate or energy price to see that
        beats = np.where(self.later, ours >= theirs, ours > theirs)
        win = self.open & (self.alone | beats)
        tie = price_for_score(self.rule, theirs, self.our_pl, b.gpus, b.energy_price, clore_usd,
                              power=self.our_power)
        marginal = np.maximum(self.open_floor, np.where(self.rival, tie, 0.0))
        charged = self.price if self.payment == "pay_your_bid" else \
            np.minimum(self.price, marginal)
        return Fill(win, marginal, np.where(win, charged, 0.0))

"""Who wins a server, and what it takes to win it: one formula for the sim, the bot and backtests.

GigaSPOT's documented rule is "the bid most profitable for the host", with the bid's power limit
taken as its power draw; the exact formula is unknown, so the rule is pluggable:

- ``highest_price``: the highest price at or above the floor wins;
- ``host_profit``: the highest ``price x clore_usd - pl x gpus x 24 / 1000 x energy_price`` (USD/day)
  wins among bids at or above the floor.

Ties go to the earlier bid (the lower id), so a newcomer must bid strictly more to take a server.
The spot market always uses ``highest_price``. All functions are vectorised over numpy arrays.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Rule = Literal["highest_price", "host_profit"]
RULES: tuple[str, ...] = ("highest_price", "host_profit")


def power_cost_usd_per_day(pl_watts: np.ndarray | float, gpus: np.ndarray | float,
                           energy_price: np.ndarray | float) -> np.ndarray | float:
    """What the host pays per day to power ``gpus`` GPUs at ``pl_watts`` each."""
    return np.asarray(pl_watts) * gpus * 24.0 / 1000.0 * energy_price


def bid_scores(rule: str, price: np.ndarray, pl: np.ndarray, gpus: np.ndarray,
               energy_price: np.ndarray, clore_usd: float, *,
               power: np.ndarray | None = None) -> np.ndarray:
    """The allocation score of each bid (higher wins). ``gpus``/``energy_price`` are per bid;
    ``power`` is their ``power_cost_usd_per_day`` when the caller already has it."""
    if rule == "highest_price":
        return np.asarray(price, dtype=np.float64)
    if rule == "host_profit":
        if power is None:
            power = np.asarray(power_cost_usd_per_day(pl, gpus, energy_price))
        return price * clore_usd - power
    raise ValueError(f"unknown allocation rule {rule!r}; expected one of {RULES}")


def price_for_score(rule: str, score: np.ndarray, pl: np.ndarray | float | None,
                    gpus: np.ndarray, energy_price: np.ndarray, clore_usd: float | np.ndarray, *,
                    power: np.ndarray | None = None) -> np.ndarray:
    """The price at which a bid with power limit ``pl`` (None: unknown) scores ``score``: the
    inverse of ``bid_scores``. ``power``: its power cost, when the caller has it."""
    if rule == "highest_price":
        return np.asarray(score, dtype=np.float64)
    if power is None:
        power = np.asarray(power_cost_usd_per_day(np.nan if pl is None else pl, gpus,
                                                  energy_price))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (score + power) / clore_usd


def segment_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Max of each CSR segment ``values[starts[i]:starts[i+1]]``; ``-inf`` for empty segments."""
    n = len(starts) - 1
    out = np.full(n, -np.inf)
    if n == 0 or len(values) == 0:
        return out
    lengths = np.diff(starts)
    nonempty = lengths > 0
    out[nonempty] = np.maximum.reduceat(values, starts[:-1][nonempty])
    return out


def rival_threshold(rule: str, *, bid_start: np.ndarray, bid_price: np.ndarray,
                    bid_pl: np.ndarray, bid_mine: np.ndarray, gpus: np.ndarray,
                    energy_price: np.ndarray, clore_usd: float,
                    our_pl: float | None,
                    floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per server: the price our bid must exceed to win, and the best rival's own price.

    Rival bids under the server's ``floor`` (when given) cannot win and are ignored: under
    ``host_profit`` such a bid may score well and would otherwise make us overpay.

    Returns ``(threshold, rival_price)``. ``threshold`` is 0 where no rival bids (the floor then
    governs) and NaN where it cannot be computed (``host_profit`` without a CLORE rate).
    ``rival_price`` is NaN where no rival bids.
    """
    n = len(bid_start) - 1
    if len(bid_price) == 0:
        return np.zeros(n), np.full(n, np.nan)
    counts = bid_start[1:] - bid_start[:-1]
    if np.count_nonzero(counts) == len(bid_price):
        return one_bid_threshold(rule, bid_price=bid_price, bid_pl=bid_pl, bid_mine=bid_mine,
                                 gpus=gpus, energy_price=energy_price, clore_usd=clore_usd,
                                 our_pl=our_pl, floor=floor,
                                 rows=None if len(bid_price) == n else counts.nonzero()[0])
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    rival = ~np.asarray(bid_mine, dtype=bool)
    if floor is not None:
        rival &= bid_price >= np.fmax(floor[rows], -np.inf)
    has_rival = np.bincount(rows[rival], minlength=n) > 0
    scores = bid_scores(rule, bid_price, bid_pl, gpus[rows], energy_price[rows], clore_usd)
    best = segment_max(np.where(rival, scores, -np.inf), bid_start)

    # the rival's own price: that of the best-scoring rival bid (the highest one when scores are NaN)
    rank = np.where(np.isnan(best[rows]), bid_price, scores)
    rank = np.where(rival, rank, -np.inf)
    top = segment_max(rank, bid_start)
    is_top = rival & (rank == top[rows])
    rival_price = np.full(n, np.nan)
    rival_price[rows[is_top]] = bid_price[is_top]

    threshold = np.where(has_rival, price_for_score(rule, best, our_pl, gpus, energy_price,
                                                    clore_usd), 0.0)
    return threshold, rival_price


def one_bid_threshold(rule: str, *, bid_price: np.ndarray, bid_pl: np.ndarray,
                      bid_mine: np.ndarray, gpus: np.ndarray, energy_price: np.ndarray,
                      clore_usd: float | np.ndarray, our_pl: float | None,
                      floor: np.ndarray | None,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``rival_threshold`` when no server has more than one bid (``rows``: each bid's server;
    None when every server has exactly one).

    The backtest's frames show each server's best rival only, so this is its every tick: the
    same numbers without the per-server reductions, which cost more than the rest of a view.
    Without ``rows`` it is element-wise, so it takes arrays of any shape (ticks x servers, with
    ``clore_usd`` one rate per tick as a column) and gives what one tick at a time gives."""
    n = len(gpus)
    if rows is not None:
        gpus, energy_price = gpus[rows], energy_price[rows]
        floor = None if floor is None else floor[rows]
    rival = ~np.asarray(bid_mine, dtype=bool)
    if floor is not None:
        rival &= bid_price >= np.fmax(floor, -np.inf)  # an unknown floor does not bind
    score = bid_scores(rule, bid_price, bid_pl, gpus, energy_price, clore_usd)
    threshold = np.where(rival, price_for_score(rule, score, our_pl, gpus, energy_price,
                                                clore_usd), 0.0)
    rival_price = np.where(rival, bid_price, np.nan)
    if rows is None:
        return threshold, rival_price
    every_threshold, every_price = np.zeros(n), np.full(n, np.nan)
    every_threshold[rows] = threshold
    every_price[rows] = rival_price
    return every_threshold, every_price


def winning_bids(rule: str, *, bid_start: np.ndarray, bid_id: np.ndarray, bid_price: np.ndarray,
                 bid_pl: np.ndarray, gpus: np.ndarray, energy_price: np.ndarray,
                 floor: np.ndarray, clore_usd: float, eligible: np.ndarray) -> np.ndarray:
    """Per server, the index (into the bid arrays) of the winning bid, or -1 when none wins.

    A bid competes when its price is at or above the server's floor and the server is
    ``eligible`` (online and rentable). Highest score wins; ties go to the lowest bid id.
    """
    n = len(bid_start) - 1
    out = np.full(n, -1, dtype=np.int64)
    if len(bid_price) == 0:
        return out
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(bid_start))
    scores = bid_scores(rule, bid_price, bid_pl, gpus[rows], energy_price[rows], clore_usd)
    ok = (bid_price >= np.nan_to_num(floor[rows], nan=np.inf)) & eligible[rows] & np.isfinite(scores)
    scores = np.where(ok, scores, -np.inf)
    # sort by (row, -score, id): the first bid of each row is the winner
    order = np.lexsort((bid_id, -scores, rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    winners = order[first]
    good = np.isfinite(scores[winners])
    out[rows[winners[good]]] = winners[good]
    return out

"""One target's ``TargetView``: the servers it may hold, what winning each costs, and our orders.

Built once per target per tick, live and in backtests (500 servers x 43,200 ticks), so the common
path is a handful of numpy operations and no per-server Python. The costly part of the match (GPU
model substrings, countries, exclusions) depends only on the server list: ``static_match`` computes
it once and ``StaticMatchCache`` (or the ``static=`` argument) reuses it while the list is the same.

Units: prices per server-day in the target's order currency; ``cap_per_gpu_day`` is converted from
USD with the frame's own rates (``MarketFrame.usd_rate``), and an unknown rate leaves the cap NaN
and no server eligible: the bot never guesses a rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bidder.allocation import rival_threshold
from bidder.config import MarketsConfig, TargetConfig
from bidder.memory import MarketMemory
from storage.frames import MarketFrame
from strategies.base import Candidates, OwnOrder, TargetSpec, TargetView


def cap_per_gpu_day(frame: MarketFrame, target: TargetConfig) -> float:
    """The target's cap per GPU-day in its order currency; NaN for a USD cap at an unknown rate."""
    if target.cap_currency in (None, target.currency):
        return float(target.max_price_per_gpu_day)
    usd_per_unit = frame.usd_rate(target.currency)
    if not (math.isfinite(usd_per_unit) and usd_per_unit > 0):
        return math.nan
    return target.max_price_per_gpu_day / usd_per_unit


def target_spec(target: TargetConfig, *, cap: float, fee_fraction: float,
                creation_fee: float = 0.0, rebuy_block: float = 0.0) -> TargetSpec:
    """The strategy's view of a configured target (``cap`` per GPU-day, order currency)."""
    return TargetSpec(
        name=target.name,
        market=target.market,
        unit=target.unit,
        count=target.count,
        currency=target.currency,
        cap_per_gpu_day=cap,
        pl=float(target.oc.pl) if target.oc is not None else None,
        fee_fraction=fee_fraction,
        creation_fee=creation_fee,
        rebuy_block=rebuy_block,
    )


def static_match(frame: MarketFrame, target: TargetConfig) -> np.ndarray:
    """Servers whose hardware and place match the target (GPU model, GPUs per server, country,
    exclusions): the part of the match that does not change from tick to tick. Bool, one per row."""
    ok = frame.gpus >= target.min_gpus_per_server
    if target.max_gpus_per_server is not None:
        ok &= frame.gpus <= target.max_gpus_per_server
    if target.gpu_model:
        models = np.char.lower(frame.gpu_model.astype(str))
        ok &= np.char.find(models, target.gpu_model.lower()) >= 0
    if target.countries:
        ok &= np.isin(frame.country.astype(str), target.countries)
    if target.exclude_servers:
        ok &= ~np.isin(frame.server_id, target.exclude_servers)
    return ok


class StaticMatchCache:
    """Remembers ``static_match`` per target while the frame's server list stays the same.

    A backtest replaying one recorded universe then matches strings once per target instead of
    once per tick. The list counts as the same when the frame's ``server_id``, ``gpus``,
    ``gpu_model`` and ``country`` arrays are the same objects or hold the same values.
    """

    def __init__(self) -> None:
        self._columns: tuple[np.ndarray, ...] | None = None
        self._masks: dict[str, np.ndarray] = {}

    def get(self, frame: MarketFrame, target: TargetConfig) -> np.ndarray:
        columns = (frame.server_id, frame.gpus, frame.gpu_model, frame.country)
        if not self._same_servers(columns):
            self._columns = columns
            self._masks.clear()
        mask = self._masks.get(target.name)
        if mask is None:
            mask = self._masks[target.name] = static_match(frame, target)
        return mask

    def _same_servers(self, columns: tuple[np.ndarray, ...]) -> bool:
        if self._columns is None:
            return False
        return all(new is old or (len(new) == len(old) and bool(np.all(new == old)))
                   for new, old in zip(columns, self._columns))


def _live_mask(frame: MarketFrame, target: TargetConfig, floor: np.ndarray,
               pl: float | None) -> np.ndarray:
    """The part of the match that changes with time: health, availability, a known floor, our pl."""
    ok = frame.online & frame.rentable & np.isfinite(floor)
    if target.min_reliability > 0:
        ok &= frame.reliability >= target.min_reliability  # NaN (unknown) fails
    if target.working_properly_only:
        ok &= frame.working_properly
    if pl is not None:
        ok &= (frame.pl_min <= pl) & (pl <= frame.pl_max)
    return ok


def build_target_view(frame: MarketFrame, target: TargetConfig, orders: Sequence[OwnOrder], *,
                      now: float, markets: MarketsConfig, recent_wins: np.ndarray | None = None,
                      static: np.ndarray | None = None,
                      thresholds: tuple[np.ndarray, np.ndarray] | None = None,
                      rebuy_block: float = 0.0,
                      left_at: Mapping[int, float] | None = None,
                      left_unusable: Mapping[int, float] | None = None,
                      memory: MarketMemory | None = None,
                      watching: bool = False) -> TargetView:
    """What ``target``'s strategy sees in ``frame``, with ``orders`` (our live orders for it).

    ``markets`` gives the GigaSPOT allocation rule (spot always uses ``highest_price``) and the fee
    fraction. ``static`` is ``static_match(frame, target)`` when the caller keeps it between ticks.
    ``thresholds`` is every server's ``rival_threshold`` (threshold, rival price) for the target
    in ``frame``, when the caller has it (a backtest works it out for many ticks at once).
    ``rebuy_block`` (``[bot] rebuy_block``) and ``left_at`` (server id -> when we last cancelled
    an order of this target there) let the strategy avoid buying back what it just left;
    ``left_unusable`` (server id -> when) names the servers it had to leave lately
    (``bidder.orders.left_unusable``), which it may come back to.
    ``memory`` (one per target, kept between decisions) takes in the rivals' prices now and gives
    each candidate how contested it has been (``raises_per_hour``, ``hands_per_hour``,
    ``falls_per_hour``, ``falls_seen``, ``rival_high``).
    ``watching``: a spot target's first watch-list round is not complete yet (no creates).
    Servers of our orders are always rows: ``eligible`` False when they no longer match, NaN data
    when they are not in the frame at all.
    """
    if frame.market != target.market:
        raise ValueError(f"target {target.name!r} is on {target.market}, "
                         f"the frame is {frame.market}")
    if static is None:
        static = static_match(frame, target)
    elif len(static) != frame.n_servers:
        raise ValueError(f"static mask has {len(static)} rows "
                         f"for a frame of {frame.n_servers} servers")

    rules = markets.rules(target.market)
    usd_per_unit = frame.usd_rate(target.currency)
    cap = cap_per_gpu_day(frame, target)
    spec = target_spec(target, cap=cap, fee_fraction=rules.fee_fraction,
                       creation_fee=rules.creation_fee, rebuy_block=rebuy_block)
    floor_all = frame.floor(target.currency)
    match = static & _live_mask(frame, target, floor_all, spec.pl)
    if not math.isfinite(cap):
        match = np.zeros_like(match)

    order_rows = [frame.row(o.server_id) for o in orders]
    keep = match.copy()
    keep[[r for r in order_rows if r is not None]] = True
    rows = keep.nonzero()[0]

    # every server's threshold, then the kept ones: a server's depends on its own bids only, and
    # one pass over the frame's bid block is cheaper than cutting out the kept servers' bids
    if thresholds is None:
        allocation = markets.gigaspot.allocation if target.market == "gigaspot" \
            else "highest_price"
        bid_price = frame.bid_prices_in(target.currency)
        thresholds = rival_threshold(
            allocation, bid_start=frame.bid_start, bid_price=bid_price,
            bid_pl=frame.bid_pl, bid_mine=frame.bid_mine, gpus=frame.gpus,
            energy_price=frame.energy_price, clore_usd=frame.clore_usd, our_pl=spec.pl,
            floor=floor_all)
        if bid_price is not frame.bid_price:
            thresholds = _unknown_where_unconvertible(frame, bid_price, thresholds)
    threshold, rival_price = thresholds

    gpus = frame.gpus[rows]
    threshold, rival_price = _unknown_where_infinite(threshold[rows], rival_price[rows])
    columns = {
        "server_id": frame.server_id[rows],
        "gpus": gpus,
        "floor": floor_all[rows],
        "threshold": threshold,
        "rival_price": rival_price,
        "cap": cap * gpus,
        "reliability": frame.reliability[rows],
        "eligible": match[rows],
        "observed_at": frame.observed_at[rows],
    }
    absent = _orders_absent(orders, order_rows)
    if absent:
        columns = _append_absent(columns, absent, cap)
    if memory is not None:
        # its fields are Candidates' (raises_per_hour, hands_per_hour, rival_high, falls_per_hour,
        # falls_seen)
        columns.update(memory.observe(now, columns["server_id"], columns["rival_price"])._asdict())
    return TargetView(now=now, target=spec, candidates=Candidates(**columns), orders=tuple(orders),
                      usd_per_unit=usd_per_unit,
                      recent_wins=np.empty(0) if recent_wins is None else recent_wins,
                      left_at={} if left_at is None else left_at,
                      left_unusable={} if left_unusable is None else left_unusable,
                      watching=watching)


def _unknown_where_unconvertible(frame: MarketFrame, bid_price: np.ndarray,
                                 thresholds: tuple[np.ndarray, np.ndarray]
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """A server with a rival offer whose currency cannot be converted has an unknown price to
    beat (NaN), never the cheap one the other offers would give."""
    unknown = np.isnan(bid_price) & ~frame.bid_mine
    if not unknown.any():
        return thresholds
    rows = np.unique(frame.bid_server_rows()[unknown])
    threshold, rival_price = (t.copy() for t in thresholds)
    threshold[rows] = np.nan
    rival_price[rows] = np.nan
    return threshold, rival_price


def _unknown_where_infinite(threshold: np.ndarray, rival_price: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """A rival price of +inf (the backtest's record of an offer it could not convert: no bid of
    ours beats it there) is, to a strategy, an unknown price to beat (NaN), as the live view
    says of such an offer: the same inputs live and in backtests."""
    unknown = (rival_price == np.inf) | (threshold == np.inf)
    if not unknown.any():
        return threshold, rival_price
    return np.where(unknown, np.nan, threshold), np.where(unknown, np.nan, rival_price)


def _orders_absent(orders: Sequence[OwnOrder], rows: Sequence[int | None]) -> list[OwnOrder]:
    """Our orders whose server is not in the frame (``rows``: each one's row there), one per
    server."""
    seen: dict[int, OwnOrder] = {}
    for o, row in zip(orders, rows):
        if row is None:
            seen.setdefault(o.server_id, o)
    return list(seen.values())


def _append_absent(columns: dict[str, np.ndarray], absent: list[OwnOrder],
                   cap: float) -> dict[str, np.ndarray]:
    """Rows for servers we hold that the frame does not show: known id and size, unknown market."""
    k = len(absent)
    nan = np.full(k, np.nan)
    gpus = np.array([o.gpus for o in absent], dtype=np.int32)
    extra = {
        "server_id": np.array([o.server_id for o in absent], dtype=np.int64),
        "gpus": gpus,
        "floor": nan, "threshold": nan, "rival_price": nan,
        "cap": cap * gpus,
        "reliability": nan,
        "eligible": np.zeros(k, dtype=bool),
        "observed_at": nan,
    }
    return {name: np.concatenate([col, extra[name]]) for name, col in columns.items()}

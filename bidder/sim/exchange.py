"""The exchange: orders, who holds each server, the price rules and billing.

One set of rules for everybody: API users and simulated competitors go through the same methods,
so a competitor can do nothing the bot could not. A venue (spot server or GigaSPOT machine) is
re-allocated after every change to it; billing runs between changes, so it is exact for any
sequence of events without ticking a clock.

Refusals are values (``Refused``), not exceptions: the API turns them into code-6 replies or into
the GigaSPOT failure lists, competitors simply read them.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from bidder.allocation import bid_scores, power_cost_usd_per_day, winning_bids
from bidder.sim.events import Action
from bidder.sim.options import SimOptions
from bidder.sim.world import BITCOIN, CLORE, DAY, USD, Machine, SpotServer, Venue, World

SPOT = "spot"
GIGASPOT = "gigaspot"
ON_DEMAND = "on-demand"

TOLERANCE = 1e-6
"""Seconds: a cooldown counts as over this close to its end."""
PRICE_TOLERANCE = 1e-9
"""Relative: a price this close to a limit counts as on it (JSON round trips, float sums)."""

# GigaSPOT refusals, named after the reply list they land in
FAILED_TO_RENT = "failed_to_rent"
FAILED_TO_OC = "failed_to_oc"
TOO_LOW_BID = "too_low_bid"


@dataclass
class Order:
    id: int
    owner: int
    kind: str
    """``spot``, ``gigaspot`` or ``on-demand``."""
    venue_id: int
    currency: str
    price: float
    """Per day, in ``currency``."""
    created: float
    expires: float
    image: str
    creation_fee: float
    """Charged once the order has lived past ``creation_fee_after`` seconds."""
    oc: list[dict[str, int]] = field(default_factory=list)
    """GigaSPOT power settings, one per GPU."""
    pl: int = 0
    """The power limit the host must assume per GPU: the highest of ``oc`` (GigaSPOT ``pl``)."""
    last_lowered: float | None = None
    ended: float | None = None
    spend: float = 0.0
    """Price x time held, in ``currency`` (fees come on top)."""
    cached: bool = False
    """Has held its venue at some point (GigaSPOT ``cached``)."""

    @property
    def open(self) -> bool:
        return self.ended is None

    def set_oc(self, oc: list[dict[str, int]]) -> None:
        self.oc = list(oc)
        self.pl = max((gpu["pl"] for gpu in oc), default=0)


@dataclass(frozen=True)
class Refused:
    error: str
    details: dict[str, float] = field(default_factory=dict)


HolderChange = Callable[[list[Order], float], None]
"""Told the open orders of a venue whose holder just changed, and when."""


class Exchange:
    def __init__(self, options: SimOptions, world: World, start: float,
                 schedule: Callable[[float, Action], None]) -> None:
        self.options = options
        self.world = world
        self.clore_usd = options.clore_usd
        self.orders: dict[int, Order] = {}
        self.on_holder_change: HolderChange | None = None
        self.changed_machines: set[int] = set(world.machines)
        """Machines whose snapshot entry may have changed since the snapshot builder last looked."""
        self._schedule = schedule
        self._rules = {market: options.lowering(market) for market in (SPOT, GIGASPOT)}
        self._ids = itertools.count(500_001)
        self._books: dict[int, list[Order]] = {v.id: [] for v in world.venues()}
        self._holder: dict[int, Order | None] = dict.fromkeys(self._books)
        self._charge: dict[int, float] = dict.fromkeys(self._books, 0.0)
        self._billed: dict[int, float] = dict.fromkeys(self._books, start)
        self._by_owner: dict[int, list[Order]] = defaultdict(list)

    # --- reading ---------------------------------------------------------------------------------

    def rates_usd(self) -> dict[str, float]:
        return {BITCOIN: self.options.btc_usd, CLORE: self.clore_usd, USD: 1.0}

    def book(self, venue_id: int) -> list[Order]:
        """The open orders on a venue, oldest first (read only)."""
        return self._books[venue_id]

    def holder(self, venue_id: int) -> Order | None:
        """The order running on a venue now (the spot ``active`` offer, the GigaSPOT winner)."""
        return self._holder[venue_id]

    def orders_of(self, owner: int) -> list[Order]:
        return self._by_owner.get(owner, [])

    def find(self, owner: int, order_id: object) -> Order | None:
        """``owner``'s open order ``order_id``; ``None`` when unknown, someone else's or ended."""
        order = self.orders.get(order_id) if isinstance(order_id, int) else None
        return order if order is not None and order.owner == owner and order.open else None

    def floor(self, venue: Venue, currency: str) -> float | None:
        """The lowest price ``venue`` takes in ``currency``; ``None`` when it does not take it."""
        if isinstance(venue, Machine):
            return venue.min_bid if currency == CLORE else None
        return venue.floors.get(currency)

    def price_to_win(self, order: Order) -> float | None:
        """The price at which ``order`` would tie its best rival; ``None`` without rivals."""
        venue = self._venue(order.venue_id)
        book = self._books[order.venue_id]
        scores = self._scores(venue, book)
        rivals = [s for o, s in zip(book, scores) if o is not order]
        best = max(rivals, default=-math.inf)
        return self._price_for_score(venue, order, best) if best > -math.inf else None

    def lowest_allowed(self, order: Order, now: float) -> float | None:
        """The lowest price ``order`` may be lowered to now; ``None`` while its cooldown runs."""
        venue = self._venue(order.venue_id)
        if self.lowering_wait(order, now) > 0:
            return None
        floor = self.floor(venue, order.currency) or 0.0
        return max(self._rules[venue.market].step.lowest(order.price), floor)

    def lowering_wait(self, order: Order, now: float) -> float:
        """Seconds until ``order`` may be lowered (0 when it may be now)."""
        if order.last_lowered is None:
            return 0.0
        left = self._rules[self._venue(order.venue_id).market].cooldown - (now - order.last_lowered)
        return left if left > TOLERANCE else 0.0

    def paid_creation_fee(self, order: Order, now: float) -> float:
        lived = (now if order.ended is None else order.ended) - order.created
        return order.creation_fee if lived > self.options.creation_fee_after else 0.0

    def balance(self, owner: int, currency: str, start: float, now: float) -> float:
        """``start`` minus everything ``owner``'s orders in ``currency`` cost up to ``now``."""
        fee = 1.0 + self.options.fee_percent / 100.0
        spent = sum(o.spend * fee + self.paid_creation_fee(o, now)
                    for o in self.orders_of(owner) if o.currency == currency)
        return start - spent

    # --- orders ----------------------------------------------------------------------------------

    def create_order(self, owner: int, server_id: int, kind: str, currency: str, image: str,
                     now: float, price: float = 0.0) -> Order | Refused:
        """A spot offer at ``price``, or (``kind == ON_DEMAND``) a rental at the server's price."""
        server = self.world.servers.get(server_id)
        refusal = self._server_refusal(owner, server, currency)
        if refusal is not None:
            return refusal
        assert server is not None
        if kind == ON_DEMAND:
            if server.rented:
                return Refused("server_rented")
            price = server.on_demand[currency]
        elif price < server.floors[currency] * (1 - PRICE_TOLERANCE):
            return Refused("price_too_low", {"min_price": server.floors[currency]})
        life = server.mrl_hours * 3600.0
        return self._open(owner, kind, server, currency, price, image, now, life)

    def create_gigaspot(self, owner: int, machine_id: int, currency: str, price: float, image: str,
                        oc: list[dict[str, int]], now: float) -> Order | Refused:
        machine = self.world.machines.get(machine_id)
        if (machine is None or not machine.rentable or currency != CLORE
                or self._open_orders(owner) >= self.options.order_limit):
            return Refused(FAILED_TO_RENT)
        if not oc_fits(machine, oc):
            return Refused(FAILED_TO_OC)
        if price < machine.min_bid * (1 - PRICE_TOLERANCE):
            return Refused(TOO_LOW_BID)
        life = min(machine.max_rental_length, self.options.gigaspot_max_life)
        return self._open(owner, GIGASPOT, machine, currency, price, image, now, life, oc)

    def reprice(self, order: Order, price: float, now: float,
                oc: list[dict[str, int]] | None = None) -> Refused | None:
        """Change an open order's price (and GigaSPOT power settings) under the market's rules.

        Spot checks, in order: the lowering cooldown, the lowering step (``max_step`` is the lowest
        price allowed now: the step's limit, or the floor when that is higher), the floor. GigaSPOT
        checks ``min_bid`` first (a too-low bid has its own reply list), then the same limits.
        """
        venue = self._venue(order.venue_id)
        floor = self.floor(venue, order.currency) or 0.0
        under_floor: Refused | None = None
        if price < floor * (1 - PRICE_TOLERANCE):
            under_floor = (Refused(TOO_LOW_BID) if order.kind == GIGASPOT
                           else Refused("price_too_low", {"min_price": floor}))
        if under_floor is not None and order.kind == GIGASPOT:
            return under_floor
        if price < order.price:
            wait = self.lowering_wait(order, now)
            if wait > 0:
                return Refused("can_lower_every_600_seconds", {"time_to_lowering": math.ceil(wait)})
            step_limit = self._rules[venue.market].step.lowest(order.price)
            if price < step_limit * (1 - PRICE_TOLERANCE):
                return Refused("exceeded_max_step", {"max_step": max(step_limit, floor)})
        if under_floor is not None:
            return under_floor
        if oc is not None and not (isinstance(venue, Machine) and oc_fits(venue, oc)):
            return Refused(FAILED_TO_OC)
        with self._change(venue, now):
            if price < order.price:
                order.last_lowered = now
            order.price = price
            if oc is not None:
                order.set_oc(oc)
        return None

    def cancel(self, order: Order, now: float) -> None:
        """End an order (cancelled, expired or terminated: the API does not tell them apart)."""
        if not order.open:
            return
        venue = self._venue(order.venue_id)
        with self._change(venue, now):
            self._books[venue.id].remove(order)
            order.ended = now
            if order.kind == ON_DEMAND:
                venue.rented = False

    # --- the world -------------------------------------------------------------------------------

    def set_online(self, venue: Venue, online: bool, now: float) -> None:
        with self._change(venue, now):
            venue.online = online

    def set_rented(self, venue: Venue, rented: bool, now: float) -> None:
        with self._change(venue, now):
            venue.rented = rented

    def set_clore_price(self, usd: float, now: float) -> None:
        """A new CLORE rate moves USD comparisons (spot) and host-profit scores (GigaSPOT)."""
        venues = self.world.venues()
        for venue in venues:
            self._bill(venue.id, now)
        self.clore_usd = usd
        for venue in venues:
            self._reallocate(venue, now)

    def settle(self, now: float) -> None:
        """Bring every holder's ``spend`` up to ``now``."""
        for venue_id, holder in self._holder.items():
            if holder is not None:
                self._bill(venue_id, now)

    # --- internals -------------------------------------------------------------------------------

    def _venue(self, venue_id: int) -> Venue:
        venue = self.world.venue(venue_id)
        assert venue is not None, venue_id
        return venue

    def _open_orders(self, owner: int) -> int:
        return sum(1 for o in self.orders_of(owner) if o.open)

    def _server_refusal(self, owner: int, server: SpotServer | None,
                        currency: str) -> Refused | None:
        if server is None:
            return Refused("server_not_found")
        if server.visibility != "public":
            return Refused("server_not_public")
        if not server.online:
            return Refused("server_offline")
        if currency not in server.floors:
            return Refused("currency_not_accepted")
        if self._open_orders(owner) >= self.options.order_limit:
            return Refused("order_limit_reached")
        return None

    def _open(self, owner: int, kind: str, venue: Venue, currency: str, price: float, image: str,
              now: float, life: float, oc: list[dict[str, int]] | None = None) -> Order:
        rules = self._rules[venue.market]
        fee = self.options.creation_fee_clore
        if currency != CLORE:
            fee = round(fee * self.clore_usd / self.rates_usd()[currency], 8)
        order = Order(id=next(self._ids), owner=owner, kind=kind, venue_id=venue.id,
                      currency=currency, price=price, created=now, expires=now + life, image=image,
                      creation_fee=fee, last_lowered=now if rules.from_creation else None)
        order.set_oc(oc or [])
        self.orders[order.id] = order
        self._by_owner[owner].append(order)
        with self._change(venue, now):
            self._books[venue.id].append(order)
            if kind == ON_DEMAND:
                venue.rented = True
        self._schedule(order.expires, lambda t: self.cancel(order, t))
        return order

    @contextmanager
    def _change(self, venue: Venue, now: float) -> Iterator[None]:
        """Bill the venue's holder up to ``now``, let the caller change it, then re-allocate it."""
        self._bill(venue.id, now)
        yield
        self._reallocate(venue, now)

    def _bill(self, venue_id: int, now: float) -> None:
        holder = self._holder[venue_id]
        since = self._billed[venue_id]
        if holder is not None and now > since:
            holder.spend += self._charge[venue_id] * (now - since) / DAY
        self._billed[venue_id] = max(now, since)

    def _reallocate(self, venue: Venue, now: float) -> None:
        book = self._books[venue.id]
        old = self._holder[venue.id]
        holder, charge = self._pick(venue, book)
        self._holder[venue.id], self._charge[venue.id] = holder, charge
        if isinstance(venue, Machine):
            self.changed_machines.add(venue.id)
        if holder is not None and holder.kind == SPOT and self.options.outbid_policy == "terminate":
            for loser in [o for o in book if o is not holder]:
                book.remove(loser)
                loser.ended = now
        if holder is old:
            return
        if holder is not None:
            holder.cached = True
        if self.on_holder_change is not None and book:
            self.on_holder_change(list(book), now)

    def _pick(self, venue: Venue, book: list[Order]) -> tuple[Order | None, float]:
        """Who runs on ``venue`` and what it pays per day."""
        on_demand = next((o for o in book if o.kind == ON_DEMAND), None)
        if on_demand is not None:
            return (on_demand, on_demand.price) if venue.online else (None, 0.0)
        if not book or not venue.rentable:
            return None, 0.0
        if isinstance(venue, Machine):
            index = self._gigaspot_winner(venue, book)
        else:  # highest USD value at or above the floor; ties go to the earlier offer
            scores = self._scores(venue, book)
            index = max(range(len(book)), key=lambda i: (scores[i], -book[i].id))
            index = index if scores[index] > -math.inf else -1
        if index < 0:
            return None, 0.0
        holder = book[index]
        if self.options.payment == "pay_your_bid":
            return holder, holder.price
        scores = self._scores(venue, book)
        runner_up = max((s for i, s in enumerate(scores) if i != index), default=-math.inf)
        floor = self.floor(venue, holder.currency) or 0.0
        if runner_up == -math.inf:
            return holder, min(holder.price, floor)
        second = self._price_for_score(venue, holder, runner_up)
        return holder, min(holder.price, max(floor, second))

    def _gigaspot_winner(self, machine: Machine, book: list[Order]) -> int:
        """The index of the winning bid under the configured allocation rule, or -1."""
        return int(winning_bids(
            self.options.allocation, bid_start=np.array([0, len(book)]),
            bid_id=np.array([o.id for o in book]), bid_price=np.array([o.price for o in book]),
            bid_pl=np.array([o.pl for o in book], dtype=np.float64),
            gpus=np.array([machine.gpus]), energy_price=np.array([machine.energy_price]),
            floor=np.array([machine.min_bid]), clore_usd=self.clore_usd,
            eligible=np.array([True]))[0])

    def _scores(self, venue: Venue, book: list[Order]) -> list[float]:
        """Each order's allocation score; ``-inf`` below the floor (it cannot run)."""
        if isinstance(venue, Machine):
            raw = bid_scores(self.options.allocation, np.array([o.price for o in book]),
                             np.array([o.pl for o in book], dtype=np.float64), venue.gpus,
                             venue.energy_price, self.clore_usd).tolist()
            return [s if o.price >= venue.min_bid else -math.inf for o, s in zip(book, raw)]
        rates = self.rates_usd()
        return [o.price * rates[o.currency]
                if o.kind == SPOT and o.price >= venue.floors[o.currency] else -math.inf
                for o in book]

    def _price_for_score(self, venue: Venue, order: Order, score: float) -> float:
        """The price at which ``order`` would score ``score``."""
        if isinstance(venue, SpotServer):
            return score / self.rates_usd()[order.currency]
        if self.options.allocation == "highest_price":
            return score
        power = float(power_cost_usd_per_day(order.pl, venue.gpus, venue.energy_price))
        return (score + power) / self.clore_usd


OC_FIELDS = ("pl", "core_lock", "mem_lock", "mem_offset", "core_offset")


def oc_fits(machine: Machine, oc: list[dict[str, int]]) -> bool:
    """One setting per GPU, each value inside that GPU's allowed range."""
    if len(oc) != machine.gpus:
        return False
    for settings, ranges in zip(oc, machine.gpu_ranges):
        for name, value in settings.items():
            low, high = ranges[name]
            if not low <= value <= high:
                return False
    return True

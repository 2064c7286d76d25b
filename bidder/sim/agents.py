"""Competitors: the other bidders the bot meets, and their arrivals and departures.

Each agent holds at most one order on one venue and acts through the exchange's own methods, so it
obeys the same cooldown, step and floor as the bot (it has no HTTP and no rate limit). Agents wake
on their own schedule and, after their reaction delay, whenever the holder of their venue changes:

- ``Agent``: a static bidder; places one price and keeps it until it leaves.
- ``Outbidder``: when someone else holds the venue, raises to just above the price that wins,
  up to a private cap; never lowers.
- ``Ratchet``: NiceHashBot style; outbids like ``Outbidder`` and, while holding the venue, steps
  down by the largest allowed step each time the cooldown ends.
- ``Miner``: a GigaSPOT ratchet whose cap is its mining revenue minus the power it pays for.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from bidder.allocation import power_cost_usd_per_day
from bidder.sim.events import EventQueue
from bidder.sim.exchange import SPOT, Exchange, Order, Refused
from bidder.sim.options import SimOptions
from bidder.sim.world import CLORE, Machine

IMAGE = "cloreai/ubuntu22.04-cuda12"
TICK = 0.01
"""Outbidders bid this fraction above the price that wins."""
SPAWN_TRIES = 10
"""Machines a would-be miner looks at before giving up."""


def clore_up(price: float) -> float:
    """Round a CLORE price up to the 4 decimals agents bid in (never below ``price``)."""
    return math.ceil(price * 10_000 - 1e-6) / 10_000


def outbid_price(current: float, to_win: float, cap: float, *,
                 in_clore: bool = True) -> float | None:
    """An outbidder's answer to a holder it would tie at ``to_win``: just above it, if that is a
    raise within ``cap``; ``None``: no change. (Pure, so backtests can replay the same answer.)
    A CLORE price is rounded up to the 4 decimals agents bid in; a price in another currency
    (bitcoin: a day's price is about 1e-5) is not, 4 decimals being above any cap there."""
    target = clore_up(to_win * (1 + TICK)) if in_clore else to_win * (1 + TICK)
    return target if current < target <= cap else None


@dataclass
class Agent:
    """A static bidder (and the base of the others)."""

    venue_id: int
    start_price: float
    """CLORE per day."""
    leave_at: float
    reaction: float = 60.0
    """Seconds from a change of holder on its venue to its answer."""
    cap: float = 0.0
    """Highest price it will pay (CLORE per day); not used by static bidders."""
    pl: int = 0
    """GigaSPOT power limit per GPU (watts)."""
    user: int = 0
    """Set when the agent joins the market."""
    order: Order | None = None

    def wake(self, exchange: Exchange, now: float) -> float | None:
        """Act; return when to wake next, or ``None`` when leaving the market."""
        if now >= self.leave_at:
            if self.order is not None:
                exchange.cancel(self.order, now)
            return None
        if self.order is None:
            placed = self._place(exchange, now)
            if isinstance(placed, Refused):
                return None
            self.order = placed
        elif not self.order.open:
            return None
        else:
            self.act(exchange, self.order, now)
        return self.next_wake(exchange, self.order, now)

    def act(self, exchange: Exchange, order: Order, now: float) -> None:
        """What to do on waking with an open order; a static bidder does nothing."""

    def next_wake(self, exchange: Exchange, order: Order, now: float) -> float:
        return self.leave_at

    def limit(self, exchange: Exchange) -> float:
        return self.cap

    def _place(self, exchange: Exchange, now: float) -> Order | Refused:
        venue = exchange.world.venue(self.venue_id)
        if isinstance(venue, Machine):
            oc = [{"pl": self.pl} for _ in range(venue.gpus)]
            return exchange.create_gigaspot(self.user, self.venue_id, CLORE, self.start_price,
                                            IMAGE, oc, now)
        return exchange.create_order(self.user, self.venue_id, SPOT, CLORE, IMAGE, now,
                                     self.start_price)


@dataclass
class Outbidder(Agent):
    def act(self, exchange: Exchange, order: Order, now: float) -> None:
        holder = exchange.holder(order.venue_id)
        if holder is None or holder is order or holder.kind != order.kind:
            return  # nobody to outbid (free, ours, or rented on demand)
        to_win = exchange.price_to_win(order)
        if to_win is None:
            return
        target = outbid_price(order.price, to_win, self.limit(exchange))
        if target is not None:
            exchange.reprice(order, target, now)


@dataclass
class Ratchet(Outbidder):
    def act(self, exchange: Exchange, order: Order, now: float) -> None:
        if exchange.holder(order.venue_id) is not order:
            super().act(exchange, order, now)
            return
        lowest = exchange.lowest_allowed(order, now)
        if lowest is not None and clore_up(lowest) < order.price:
            exchange.reprice(order, clore_up(lowest), now)

    def next_wake(self, exchange: Exchange, order: Order, now: float) -> float:
        venue = exchange.world.venue(order.venue_id)
        assert venue is not None
        at_floor = order.price <= (exchange.floor(venue, order.currency) or 0.0)
        if exchange.holder(order.venue_id) is not order or at_floor:
            return self.leave_at
        return min(self.leave_at, now + max(exchange.lowering_wait(order, now), self.reaction))


@dataclass
class Miner(Ratchet):
    revenue_usd: float = 0.0
    """What the whole machine earns mining, USD per day."""

    def limit(self, exchange: Exchange) -> float:
        machine = exchange.world.machines[self.venue_id]
        power = float(power_cost_usd_per_day(self.pl, machine.gpus, machine.energy_price))
        return (self.revenue_usd - power) / exchange.clore_usd


class Population:
    """The competitors in the market: their wake-ups, arrivals and departures."""

    def __init__(self, exchange: Exchange, events: EventQueue, options: SimOptions) -> None:
        self.agents: dict[int, Agent] = {}
        """By user id."""
        self._exchange = exchange
        self._events = events
        self._options = options
        self._rng = random.Random(f"{options.seed}:agents")
        self._users = itertools.count(10_001)
        self._pending: dict[int, tuple[float, int]] = {}
        self._tokens = itertools.count()
        self._arrivals = True
        exchange.on_holder_change = self._holder_changed

    def new_user(self) -> int:
        """A fresh user id for a competitor (or a test's rival)."""
        return next(self._users)

    def add(self, agent: Agent, now: float) -> Agent:
        agent.user = self.new_user()
        self.agents[agent.user] = agent
        self._wake(agent, now)
        return agent

    def start(self, now: float) -> None:
        """The opening population, and arrivals that keep it steady."""
        for market, count in (("spot", self._options.spot_agents),
                              ("gigaspot", self._options.gigaspot_agents)):
            for _ in range(count):
                self._spawn(market, now)
            if count:
                self._next_arrival(market, count / self._options.agent_lifetime, now)

    def remove_all(self, now: float) -> None:
        """Every competitor cancels and leaves; no more arrive."""
        self._arrivals = False
        for agent in list(self.agents.values()):
            if agent.order is not None:
                self._exchange.cancel(agent.order, now)
        self.agents.clear()
        self._pending.clear()

    def _wake(self, agent: Agent, when: float) -> None:
        """Make sure ``agent`` wakes at ``when`` (or earlier, if it already is to)."""
        pending = self._pending.get(agent.user)
        if pending is not None and pending[0] <= when:
            return
        token = next(self._tokens)
        self._pending[agent.user] = (when, token)
        self._events.at(when, lambda t: self._run(agent, token, t))

    def _run(self, agent: Agent, token: int, now: float) -> None:
        pending = self._pending.get(agent.user)
        if pending is None or pending[1] != token:
            return  # superseded by an earlier wake-up, or the agent left
        del self._pending[agent.user]
        when = agent.wake(self._exchange, now)
        if when is None:
            self.agents.pop(agent.user, None)
        else:
            self._wake(agent, max(when, now + 1.0))

    def _holder_changed(self, orders: list[Order], now: float) -> None:
        for order in orders:
            agent = self.agents.get(order.owner)
            if agent is not None:
                self._wake(agent, now + agent.reaction)

    def _next_arrival(self, market: str, rate: float, now: float) -> None:
        def arrive(t: float) -> None:
            if self._arrivals:
                self._spawn(market, t)
                self._next_arrival(market, rate, t)
        self._events.at(now + self._rng.expovariate(rate), arrive)

    def _spawn(self, market: str, now: float) -> None:
        agent = self._spot_agent(now) if market == "spot" else self._gigaspot_agent(now)
        if agent is not None:
            self.add(agent, now)

    def _spot_agent(self, now: float) -> Agent | None:
        rng = self._rng
        servers = [s for s in self._exchange.world.servers.values()
                   if s.visibility == "public" and s.rentable and CLORE in s.floors]
        if not servers:
            return None
        server = rng.choices(servers, weights=[s.demand for s in servers])[0]
        floor = server.floors[CLORE]
        kind = rng.choices((Agent, Outbidder, Ratchet), weights=(3, 4, 3))[0]
        return kind(venue_id=server.id, start_price=clore_up(floor * rng.uniform(1.0, 1.4)),
                    leave_at=now + rng.expovariate(1.0 / self._options.agent_lifetime),
                    reaction=rng.uniform(20.0, 300.0), cap=clore_up(floor * rng.uniform(1.3, 2.5)))

    def _gigaspot_agent(self, now: float) -> Agent | None:
        """A miner on a machine where mining pays (a few tries), now and then a static bidder."""
        rng = self._rng
        machines = [m for m in self._exchange.world.machines.values() if m.rentable]
        for _ in range(SPAWN_TRIES if machines else 0):
            machine = rng.choices(machines, weights=[m.demand for m in machines])[0]
            low = max(g["pl"][0] for g in machine.gpu_ranges)
            high = min(g["pl"][1] for g in machine.gpu_ranges)
            revenue = machine.gpu.mining_usd * machine.gpus * rng.uniform(0.85, 1.2)
            miner = Miner(venue_id=machine.id, start_price=0.0,
                          leave_at=now + rng.expovariate(1.0 / self._options.agent_lifetime),
                          reaction=rng.uniform(30.0, 600.0), pl=rng.randint(low, (low + high) // 2),
                          revenue_usd=revenue)
            cap = miner.limit(self._exchange)
            if cap < machine.min_bid:
                continue  # mining there does not pay
            miner.start_price = clore_up(min(cap, machine.min_bid * rng.uniform(1.0, 1.3)))
            if rng.random() < 0.25:  # a static bidder who did the same sums once
                return Agent(venue_id=machine.id, start_price=miner.start_price,
                             leave_at=miner.leave_at, pl=miner.pl)
            return miner
        return None

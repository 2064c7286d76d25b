"""``SimMarket``: a rule-exact simulated Clore market on an injected clock.

Tests use it in-process (``httpx.Client(transport=market.transport())``, no sockets); ``serve``
puts it on loopback for dry runs and demos. The market only moves when asked: every request (and
every control helper) first runs the world's events up to the clock's time, so a ``ManualClock``
gives exact, repeatable runs and a ``ScaledClock`` a fast-forwarded live market.
"""

from __future__ import annotations

import copy
import threading

import httpx

from bidder.clock import Clock
from bidder.sim.agents import Agent, Population
from bidder.sim.api import Api, CdnStats, KeyStats
from bidder.sim.dynamics import WorldEvents
from bidder.sim.events import EventQueue
from bidder.sim.exchange import SPOT, Exchange, Order, Refused
from bidder.sim.faults import AFTER_ACTING, FaultInjector, NoReply
from bidder.sim.options import SimOptions
from bidder.sim.snapshot import SnapshotCdn
from bidder.sim.world import CLORE, Machine, SpotServer, Venue, generate_world


class SimMarket:
    def __init__(self, options: SimOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self._lock = threading.RLock()
        start = clock.now()
        self._time = start - options.warmup
        self.world = generate_world(options.seed, options.spot_servers, options.gigaspot_machines,
                                    options.clore_usd, options.btc_usd)
        self._events = EventQueue()
        self.exchange = Exchange(options, self.world, self._time, self._events.at)
        self.population = Population(self.exchange, self._events, options)
        cdn = SnapshotCdn(self.exchange, keep=options.snapshot_keep,
                          interval=options.snapshot_interval, prefix=f"sim{options.seed}")
        self._api = Api(options, self.exchange, cdn)
        self.faults = FaultInjector(options.faults, options.seed)
        """Injected faults (``options.faults``), counted by kind in ``faults.counts``."""
        if options.world_events:
            WorldEvents(self.exchange, self._events, options.seed).start(self._time)
        if options.agents:
            self.population.start(self._time)
        self.advance_to(start)

    # --- serving ---------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one API or CDN request at the clock's current time (thread-safe). With faults
        on, some requests get a fault instead (``bidder.sim.faults``); ``NoReply`` is raised when
        the reply never arrives."""
        with self._lock:
            self._catch_up()
            fault = self.faults.pick(request)
            if fault is not None and fault not in AFTER_ACTING:
                return FaultInjector.before(fault)
            response = self._api.handle(request, self._time)
            self._events.run_until(self._time)  # competitors that answer without delay
            if fault is not None:
                return FaultInjector.after(fault, response)
            return response

    def transport(self) -> httpx.MockTransport:
        """An httpx transport serving the API (``/v1/...``) and the snapshot CDN (``/cdn/...``);
        a reply that never arrives is a read timeout."""

        def answer(request: httpx.Request) -> httpx.Response:
            try:
                return self.handle(request)
            except NoReply as lost:
                raise httpx.ReadTimeout(f"no reply ({lost.kind})", request=request) from None

        return httpx.MockTransport(answer)

    def advance_to(self, t: float) -> None:
        """Run competitors, world events and billing up to ``t`` (never backwards)."""
        with self._lock:
            t = max(t, self._time)
            self._events.run_until(t)
            self._time = t

    @property
    def now(self) -> float:
        """The market's own time: the clock's time at the last request or helper call."""
        return self._time

    # --- inspection ------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, KeyStats]:
        """By API key: requests by endpoint, replies by code and by error string (a copy)."""
        with self._lock:
            return copy.deepcopy(self._api.stats)

    @property
    def cdn_stats(self) -> CdnStats:
        with self._lock:
            return copy.copy(self._api.cdn_stats)

    def user_id(self, key: str) -> int:
        """The user id the market gives ``key`` (``my_user_id``, snapshot ``owner``)."""
        with self._lock:
            return self._api.user(key)

    def orders_of(self, key: str) -> list[Order]:
        """Every order of ``key``'s user, open and ended, oldest first, spend billed up to now."""
        with self._lock:
            self._catch_up()
            self.exchange.settle(self._time)
            return list(self.exchange.orders_of(self._api.user(key)))

    def order(self, order_id: int) -> Order | None:
        with self._lock:
            self._catch_up()
            self.exchange.settle(self._time)
            return self.exchange.orders.get(order_id)

    def holder(self, venue_id: int) -> Order | None:
        """The order running on a spot server or GigaSPOT machine now."""
        with self._lock:
            self._catch_up()
            return self.exchange.holder(venue_id)

    def server(self, server_id: int) -> SpotServer:
        return self.world.servers[server_id]

    def machine(self, machine_id: int) -> Machine:
        return self.world.machines[machine_id]

    @property
    def agents(self) -> list[Agent]:
        with self._lock:
            return list(self.population.agents.values())

    # --- control ---------------------------------------------------------------------------------

    def set_online(self, venue_id: int, online: bool) -> None:
        with self._lock:
            self._catch_up()
            self.exchange.set_online(self._venue(venue_id), online, self._time)

    def set_rented(self, venue_id: int, rented: bool) -> None:
        """Rent a venue on demand to someone else (no offer runs on it), or give it back."""
        with self._lock:
            self._catch_up()
            self.exchange.set_rented(self._venue(venue_id), rented, self._time)

    def set_clore_price(self, usd: float) -> None:
        with self._lock:
            self._catch_up()
            self.exchange.set_clore_price(usd, self._time)

    def place_rival(self, venue_id: int, price: float, *, currency: str = CLORE,
                    pl: int | None = None) -> Order:
        """A bid by a fresh passive user, under the exchange's rules (``ValueError`` if refused).

        On a GigaSPOT machine every GPU gets power limit ``pl`` (default: the lowest all accept).
        """
        with self._lock:
            self._catch_up()
            venue = self._venue(venue_id)
            user = self.population.new_user()
            if isinstance(venue, Machine):
                watts = pl if pl is not None else max(g["pl"][0] for g in venue.gpu_ranges)
                oc = [{"pl": watts} for _ in range(venue.gpus)]
                result = self.exchange.create_gigaspot(user, venue_id, currency, price, "rival", oc,
                                                       self._time)
            else:
                result = self.exchange.create_order(user, venue_id, SPOT, currency, "rival",
                                                    self._time, price)
            if isinstance(result, Refused):
                raise ValueError(f"rival bid on {venue_id} refused: {result.error} "
                                 f"{result.details}")
            return result

    def reprice(self, order_id: int, price: float) -> Refused | None:
        """Change any order's price under the exchange's rules (for a test's rival)."""
        with self._lock:
            self._catch_up()
            return self.exchange.reprice(self.exchange.orders[order_id], price, self._time)

    def cancel(self, order_id: int) -> None:
        with self._lock:
            self._catch_up()
            self.exchange.cancel(self.exchange.orders[order_id], self._time)

    def add_agent(self, agent: Agent) -> Agent:
        """Let a competitor in now (it acts at once); returns it with its user id set."""
        with self._lock:
            self._catch_up()
            self.population.add(agent, self._time)
            self.advance_to(self._time)
            return agent

    def remove_agents(self) -> None:
        """Every competitor cancels its order and leaves; no new ones arrive."""
        with self._lock:
            self._catch_up()
            self.population.remove_all(self._time)

    def _catch_up(self) -> None:
        self.advance_to(self.clock.now())

    def _venue(self, venue_id: int) -> Venue:
        venue = self.world.venue(venue_id)
        if venue is None:
            raise KeyError(f"no spot server or GigaSPOT machine {venue_id}")
        return venue

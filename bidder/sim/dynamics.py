"""What moves the market besides bidders: outages, on-demand rentals and the CLORE price.

A venue with reliability r is down about (1 - r) of the time, in outages of half an hour to three
hours; now and then a server is rented on demand for some hours, which stops every spot offer or
GigaSPOT bid on it; the CLORE price drifts hourly within 0.02..0.05 USD.
"""

from __future__ import annotations

import math
import random

from bidder.sim.events import EventQueue
from bidder.sim.exchange import Exchange
from bidder.sim.world import Venue

HOUR = 3600.0
CLORE_RANGE = (0.02, 0.05)
RENTAL_EVERY = 3 * 86400.0
"""Mean seconds between two on-demand rentals of one venue."""
RENTAL_LENGTH = 8 * HOUR


class WorldEvents:
    def __init__(self, exchange: Exchange, events: EventQueue, seed: int) -> None:
        self._exchange = exchange
        self._events = events
        self._rng = random.Random(f"{seed}:world-events")

    def start(self, now: float) -> None:
        for venue in self._exchange.world.venues():
            if venue.reliability < 1.0:
                down = self._rng.uniform(0.5, 3.0) * HOUR
                up = down * venue.reliability / (1.0 - venue.reliability)
                if self._rng.random() > venue.reliability:
                    self._exchange.set_online(venue, False, now)
                self._schedule_toggle(venue, up, down, now)
            self._schedule_rental(venue, now)
        self._events.at(now + HOUR, self._drift_clore)

    def _schedule_toggle(self, venue: Venue, up: float, down: float, now: float) -> None:
        def toggle(t: float) -> None:
            self._exchange.set_online(venue, not venue.online, t)
            self._schedule_toggle(venue, up, down, t)
        mean = up if venue.online else down
        self._events.at(now + self._rng.expovariate(1.0 / mean), toggle)

    def _schedule_rental(self, venue: Venue, now: float) -> None:
        def rent(t: float) -> None:
            if venue.rentable:
                self._exchange.set_rented(venue, True, t)
                self._events.at(t + self._rng.expovariate(1.0 / RENTAL_LENGTH), give_back)
            else:
                self._schedule_rental(venue, t)

        def give_back(t: float) -> None:
            self._exchange.set_rented(venue, False, t)
            self._schedule_rental(venue, t)

        self._events.at(now + self._rng.expovariate(1.0 / RENTAL_EVERY), rent)

    def _drift_clore(self, now: float) -> None:
        price = self._exchange.clore_usd * math.exp(self._rng.gauss(0.0, 0.02))
        low, high = CLORE_RANGE
        self._exchange.set_clore_price(round(min(max(price, low), high), 5), now)
        self._events.at(now + HOUR, self._drift_clore)

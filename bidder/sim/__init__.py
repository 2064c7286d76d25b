"""A rule-exact simulated Clore market: spot servers, GigaSPOT machines, competitors, billing.

In-process for tests (``SimMarket(...).transport()``) or on loopback (``serve``, ``bidder sim``).
"""

from bidder.sim.agents import Agent, Miner, Outbidder, Ratchet
from bidder.sim.api import CdnStats, KeyStats
from bidder.sim.exchange import Order, Refused
from bidder.sim.market import SimMarket
from bidder.sim.options import SimOptions, StepRule
from bidder.sim.server import SimServer, serve

__all__ = ["Agent", "CdnStats", "KeyStats", "Miner", "Order", "Outbidder", "Ratchet", "Refused",
           "SimMarket", "SimOptions", "SimServer", "StepRule", "serve"]

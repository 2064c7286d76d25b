"""The bot's and the recorder's way into the built-in simulated market (``--sim``).

One place turns ``[sim]`` into a market and points a config at it, so ``bidder run --sim`` and
``bidder record --sim`` see the same market the same way.
"""

from __future__ import annotations

from pydantic import SecretStr

from bidder.api import CloreClient
from bidder.clock import Clock
from bidder.config import Config
from bidder.sim.market import SimMarket
from bidder.sim.options import SimOptions

SIM_KEY = "local-simulation-key"
"""Any key works with the simulated market; this one is no secret and appears in no log line."""
SIM_BASE_URL = "http://bidder-sim/v1"
"""The in-process simulated market answers here; nothing leaves the process."""
SIM_JITTER = 0.02
"""Real seconds between taking a rate-limit slot and the request reaching the in-process market
(thread switches); at ``speed`` x they are ``speed`` times as many simulated seconds, so the
simulation's client spaces its calls by that much more and the market never refuses one."""


def sim_options(config: Config) -> SimOptions:
    """The simulated market ``[sim]`` describes."""
    s = config.sim
    return SimOptions(seed=s.seed, spot_servers=s.spot_servers,
                      gigaspot_machines=s.gigaspot_machines, step_rule=s.step_rule,
                      allocation=s.allocation, payment=s.payment, agent_lifetime=s.agent_lifetime,
                      faults=s.faults)


def sim_market(config: Config, clock: Clock) -> SimMarket:
    return SimMarket(sim_options(config), clock)


def sim_config(config: Config) -> Config:
    """``config`` pointed at the in-process simulated market, with its placeholder key and call
    spacing widened by the thread jitter at ``[sim] speed``."""
    margin = SIM_JITTER * config.sim.speed
    api = config.api.model_copy(update={
        "key": SecretStr(SIM_KEY), "base_url": SIM_BASE_URL,
        "min_interval": max(config.api.min_interval, 1.0 + margin),
        "create_interval": max(config.api.create_interval, 5.0 + margin)})
    return config.model_copy(update={"api": api})


def sim_client(config: Config, market: SimMarket) -> CloreClient:
    """A client of ``market`` in-process (its transport serves the API and the CDN), on its clock
    and with its own rate budget in memory. ``config`` must come from ``sim_config``."""
    transport = market.transport()
    return CloreClient.from_config(config.api, clock=market.clock, transport=transport,
                                   cdn_transport=transport)

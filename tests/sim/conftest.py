"""Fixtures of the simulated market's tests: a manual clock, a quiet market and a user of it."""

from __future__ import annotations

import pytest

from bidder.clock import ManualClock
from bidder.sim import SimMarket
from sim_helpers import START, Trader, quiet_market


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def quiet(clock: ManualClock) -> SimMarket:
    """A small market where nothing moves unless the test moves it."""
    market, _ = quiet_market(clock)
    return market


@pytest.fixture
def trader(quiet: SimMarket, clock: ManualClock) -> Trader:
    return Trader(quiet, clock)

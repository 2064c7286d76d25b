"""Fixtures of the bot's tests: a manual clock, a database, a quiet simulated market and a rig
that runs bots on them (and restarts them, as after a crash)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bidder.bot import Bot
from bidder.clock import ManualClock
from bidder.config import Config
from bidder.sim import SimMarket, SimOptions
from bot_helpers import START, Faults, drive, new_bot
from storage.db import Database, open_database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    with open_database(db_url, writer=True) as db:
        yield db


@pytest.fixture
def quiet(clock: ManualClock) -> SimMarket:
    """A small market where nothing moves unless the test moves it."""
    return SimMarket(SimOptions.quiet(spot_servers=8, gigaspot_machines=12), clock)


@dataclass
class Rig:
    """Bots on one market and one database; ``restart`` abandons the running bot as a crash
    would (nothing written on the way out) and starts a fresh one."""

    market: SimMarket
    clock: ManualClock
    database: Database
    state_dir: Path
    config: Config
    mode: str = "live"
    faults: Faults = field(init=False)
    bot: Bot = field(init=False)

    def __post_init__(self) -> None:
        self.faults = Faults(self.market)

    def start(self, **kwargs: Any) -> Bot:
        self.bot = new_bot(self.config, self.database, self.clock, self.faults.transport(),
                           self.state_dir, mode=self.mode, **kwargs)
        self.bot.start()
        return self.bot

    def restart(self, **kwargs: Any) -> Bot:
        self.bot.close()
        return self.start(**kwargs)

    def run(self, seconds: float, after_job: Callable[[str], None] | None = None) -> None:
        drive(self.bot, self.clock, seconds, after_job)


@pytest.fixture
def rig(clock: ManualClock, database: Database, tmp_path: Path,
        quiet: SimMarket) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(config: Config, market: SimMarket | None = None, mode: str = "live") -> Rig:
        r = Rig(market or quiet, clock, database, tmp_path / "state", config, mode)
        made.append(r)
        return r

    yield make
    for r in made:
        if hasattr(r, "bot"):
            r.bot.close()

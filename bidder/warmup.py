"""Market memory warmed from the recorded market before a run starts, live and in backtests alike.

A bot that starts with an empty memory meets a ratchet bot's saw as if for the first time: until
two of its falls are seen the server looks quiet, its trough looks cheap, and its recent high is
only what was seen since the start. After every restart it would buy troughs again for half an
hour and lose them at the next jump. The recorder kept the market of the last hours; replaying it
into each target's memory before the first decision gives the bot the memory it would have had,
had it been running. The live engine (at its first decision), a replay of a bot run
(``bidder backtest --replay-diff``) and a backtest whose range starts after the recording does
all warm the same way from the same records (those before the run's start), so they still agree.

Each recorded tick of the window is observed as a decision would observe it: the target's view of
the replayed market (``bidder.backtest.market``, the backtest's own) without orders of ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from bidder.backtest.data import History, HistoryError, load_history
from bidder.backtest.market import ReplayMarket
from bidder.config import Config, TargetConfig
from bidder.memory import HIGH_WINDOW, MarketMemory
from bidder.view import StaticMatchCache, build_target_view

WINDOW = HIGH_WINDOW
"""Seconds of recorded market taken in: what the memory remembers in full (its recent high's
window; events older than that count half or less)."""


@dataclass(frozen=True)
class Warmup:
    """What warming found: one memory per target asked for, and the recorded ticks observed."""

    memories: dict[str, MarketMemory]
    ticks: int
    """The most recorded ticks any one target's memory observed."""
    since: float | None = None
    """The first tick observed (None: none)."""
    why_empty: str | None = None
    """Why nothing was observed (None: something was)."""
    not_warmed: tuple[str, ...] = ()
    """Targets left empty while others warmed, with why (a load the history refused)."""

    def describe(self) -> str:
        if not self.memories:
            return "no target uses market memory"
        if self.ticks == 0:
            return f"market memory starts empty: {self.why_empty}"
        return (f"market memory warmed from {self.ticks} recorded tick(s) before the start"
                + "".join(f"; {line}" for line in self.not_warmed))


def warm_memories(session: Session, config: Config, targets: Sequence[TargetConfig], *,
                  until: float, window: float = WINDOW) -> Warmup:
    """A memory per target in ``targets``, fed the market recorded in ``[until - window, until)``.

    Nothing recorded there (a first start, a backtest from the recording's beginning) leaves them
    empty, as they were before warming existed; ``why_empty`` says so."""
    memories = {t.name: MarketMemory() for t in targets}
    nothing = f"nothing recorded in the {window / 3600:g} h before the start"
    if not targets:
        return Warmup(memories, 0, why_empty="no target")
    ticks, since, why = 0, None, nothing
    refused: list[str] = []
    for group in _groups(targets):
        try:
            history = load_history(session, group,
                                   allocation=config.markets.gigaspot.allocation,
                                   start=until - window, end=until,
                                   grid_interval=config.bot.decide_interval)
        except HistoryError as err:  # nothing recorded then, or nothing it can replay
            if not str(err).startswith("no "):
                why = str(err)
                refused.append(f"{', '.join(t.name for t in group)} left empty: {err}")
            continue
        seen = observe_history(history, config, group, memories, until=until)
        if seen:
            ticks = max(ticks, seen)
            since = float(history.time[0]) if since is None else min(since, float(history.time[0]))
    if ticks == 0:
        return Warmup(memories, 0, why_empty=why)
    return Warmup(memories, ticks, since=since, not_warmed=tuple(refused))


def _groups(targets: Sequence[TargetConfig]) -> list[list[TargetConfig]]:
    """The targets in loads the history can take: GigaSPOT's together, spot's by order currency
    (one best rival per server, ranked in one currency)."""
    groups: dict[str, list[TargetConfig]] = {}
    for t in targets:
        groups.setdefault("gigaspot" if t.market == "gigaspot" else f"spot {t.currency}",
                          []).append(t)
    return list(groups.values())


def observe_history(history: History, config: Config, targets: Sequence[TargetConfig],
                    memories: Mapping[str, MarketMemory], *, until: float) -> int:
    """Feed each target's memory the view of every tick of ``history`` before ``until``; the
    number of ticks observed."""
    markets = {m: ReplayMarket(history, history.markets[m])
               for m in sorted({t.market for t in targets})}
    caches = {m: StaticMatchCache() for m in markets}
    rules = {m: config.markets.gigaspot.allocation if m == "gigaspot" else "highest_price"
             for m in markets}
    times = history.time.tolist()
    n = 0
    for tick, now in enumerate(times):
        if now >= until:
            break
        frames = {}
        for name, market in markets.items():
            market.advance(tick)
            frames[name] = market.frame(now, market.rivals["price"])
        for target in targets:
            market, frame = markets[target.market], frames[target.market]
            build_target_view(
                frame, target, (), now=now, markets=config.markets,
                static=caches[target.market].get(frame, target),
                thresholds=market.thresholds(
                    rules[target.market], float(target.oc.pl) if target.oc is not None else None,
                    target.currency),
                memory=memories[target.name])
        n += 1
    return n

"""One backtest run: one strategy variant over the recorded ticks, through the live bot's own code.

Each decision step builds every target's view with ``bidder.view.build_target_view`` (static
matches cached), asks the strategy through ``safe_decide``, plans with ``bidder.rules.plan`` (all
targets at once, so the budget and the one-order-per-server rule see everything) and sends the plan
to the ``EmulatedExchange``. Then, at every step, the fill model says which of our orders hold
their servers until the next step, and what they pay.

A run walks *steps*: by default the recorded ticks, deciding at the first tick and then at each tick
at least ``bot.decide_interval`` after the last decision. ``decision_times`` instead decides at
exactly those times (each sees the newest tick at or before it), and ``starting_orders`` puts the
live session's orders on the book first: together they replay a live session as it happened.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bidder.backtest.data import History
from bidder.backtest.exchange import (
    Counters,
    EmulatedExchange,
    EmulatedOrder,
    ExchangeRules,
    StartingOrder,
)
from bidder.backtest.fills import Book, Contest, contest
from bidder.backtest.market import ReplayMarket
from bidder.backtest.reactive import ReactiveRivals, ReactiveSettings
from bidder.config import CLORE, Config, TargetConfig
from bidder.memory import MarketMemory
from bidder.orders import IDLE_GRACE
from bidder.rules import Action, Cancel, Create, Plan, TargetDecision, budget_left, plan
from bidder.view import StaticMatchCache, build_target_view
from bidder.watchlist import target_candidates, watch_round_complete
from storage.frames import MarketFrame
from strategies.base import Strategy, TargetView
from strategies.registry import load_strategy, safe_decide

DAY = 86_400.0
MODES = ("replay", "reactive")
BACKTEST_MODEL = "2026-12-03"
"""The date the backtest's model of the exchange last changed (2026-12-03: calls a second after
the decision, silent GigaSPOT refusals, market memory warmed from the recording before the start).
Change it with any change to how a run is scored (``EmulatedExchange``, fills, fees, steps): a
study of ``bidder optimize`` records it, and one scored under another model is not resumed."""
RECENT_WINS_REFRESHES = 100
"""``recent_wins`` is recomputed whenever the strategy's window has slid by 1/100 of itself."""
PROGRESS_EVERY = 512

log = logging.getLogger("bidder.backtest")


@dataclass(frozen=True, slots=True)
class Variant:
    """A strategy with its parameters, applied to every target of the run; ``strategy`` None:
    each target's own configured strategy (what a live session ran)."""

    label: str
    strategy: str | None
    params: Mapping[str, Any] = field(default_factory=dict)

    def instance(self, target: TargetConfig) -> Strategy:
        if self.strategy is None:
            return load_strategy(target.strategy, dict(target.strategy_params))
        return load_strategy(self.strategy, dict(self.params))


AS_CONFIGURED = Variant("as configured", None)


FILLS = ("tick", "decision")


@dataclass(frozen=True, slots=True)
class RunSettings:
    exchange: ExchangeRules = field(default_factory=ExchangeRules)
    reactive: ReactiveSettings = field(default_factory=ReactiveSettings)
    fills: str = "tick"
    """``tick``: at a decision, the recorded tick is filled first with our orders as they stood
    (a rival raise recorded since our last decision preempts us until this decision takes
    effect, at the next step), then we decide. ``decision``: decide first and fill the tick with
    the decision already made (the older model: our bids answer a raise before it can cost us,
    so replay availability is an upper bound). A run given ``decision_times`` (a replay of a
    live session) always decides first: those steps start when the bot acted."""

    def __post_init__(self) -> None:
        if self.fills not in FILLS:
            raise ValueError(f"unknown fills {self.fills!r}; expected one of {FILLS}")


@dataclass(slots=True)
class TargetRun:
    """What one target went through in one run, step by step."""

    name: str
    market: str
    currency: str
    count: int
    unit: str
    held_units: np.ndarray
    """int64 per step: GPUs (or servers) our winning orders held"""
    held_gpus: np.ndarray
    paid_per_day: np.ndarray
    """float64 per step: what the held orders paid per day, fees excluded"""
    marginal_per_day: np.ndarray
    """float64 per step: the held servers' marginal prices per day"""
    counters: Counters
    preemptions: int = 0
    price_cost: float = 0.0
    fee_cost: float = 0.0
    overpay: list[np.ndarray] = field(default_factory=list)
    """Per held server-step: paid - marginal per GPU-day"""
    overpay_weight: list[np.ndarray] = field(default_factory=list)
    """GPU-seconds of each overpay sample"""


CallKey = tuple[str, str, int, float]
"""(target, kind: create/raise/lower/cancel, server id, time of the decision that made it)"""


def call_key(action: Action, decided_at: float) -> CallKey:
    kind = "create" if isinstance(action, Create) else "cancel" if isinstance(action, Cancel) \
        else "raise" if action.is_raise else "lower"
    return (action.target, kind, action.server_id, decided_at)


@dataclass(frozen=True, slots=True)
class KeptAway:
    """A server a bot run kept away from (``bot_server_block``): from ``at`` until ``until``
    (None: for good)."""

    server_id: int
    at: float
    until: float | None


@dataclass(frozen=True, slots=True)
class UnmanagedOrder:
    """An order of ours no target managed during a replayed bot run: its cost per day came off
    the budget the targets shared (``bidder.rules.budget_left``), from ``created_at`` until
    ``closed_at`` (None: still open), at its last recorded price."""

    server_id: int
    market: str
    currency: str
    price: float
    created_at: float
    closed_at: float | None


@dataclass(slots=True)
class RunRecord:
    variant: Variant
    mode: str
    step_time: np.ndarray
    step_tick: np.ndarray
    step_dt: np.ndarray
    targets: dict[str, TargetRun]
    reactive_raises: int = 0
    trace: list[tuple[float, Plan]] | None = None


def decision_mask(time: np.ndarray, interval: float) -> np.ndarray:
    """Decide at the first tick, then at each tick at least ``interval`` after the last decision."""
    mask = np.zeros(len(time), dtype=bool)
    last = -np.inf
    for i, t in enumerate(time.tolist()):
        if t >= last + interval - 1e-6:
            mask[i] = True
            last = t
    return mask


def steps(history: History, interval: float, decision_times: Sequence[float] | None,
          seen_at: Sequence[float] | None = None, end: float | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, tick, decide) of every step of a run (see the module docstring).

    With ``decision_times`` (non-decreasing; two decisions may share a time) every recorded tick
    is a step and so is every decision; decision ``k`` sees the newest tick at or before
    ``seen_at[k]`` (default: its own time), as a live cycle sees the newest market data it has
    fetched. Ticks never go back: a step before a decision that saw older data sees that data too.
    ``end`` past the last step adds a last step there (fills count up to ``end``).
    """
    time, tick, decide = _steps(history, interval, decision_times, seen_at)
    if end is not None and end > time[-1]:
        time, tick = np.append(time, end), np.append(tick, tick[-1])
        decide = np.append(decide, False)
    return time, tick, decide


def _steps(history: History, interval: float, decision_times: Sequence[float] | None,
           seen_at: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    time = history.time
    if decision_times is None:
        return time, np.arange(len(time), dtype=np.int64), decision_mask(time, interval)
    wanted = np.asarray(decision_times, dtype=np.float64)
    seen = wanted if seen_at is None else np.asarray(seen_at, dtype=np.float64)
    if len(seen) != len(wanted):
        raise ValueError(f"{len(seen)} seen_at times for {len(wanted)} decision times")
    if len(wanted) and (np.diff(wanted) < 0).any():
        raise ValueError("decision times must not go back")
    if len(wanted) and seen.min() < time[0]:
        raise ValueError(f"a decision saw the market at {seen.min():.0f}, before the first "
                         f"recorded tick ({time[0]:.0f})")
    plain = ~np.isin(time, wanted)
    step_time = np.concatenate([time[plain], wanted])
    tick = np.concatenate([np.flatnonzero(plain),
                           np.searchsorted(time, seen, side="right") - 1]).astype(np.int64)
    decide = np.concatenate([np.zeros(int(plain.sum()), bool), np.ones(len(wanted), bool)])
    order = np.argsort(step_time, kind="stable")
    step_time, tick, decide = step_time[order], tick[order], decide[order]
    return step_time, np.minimum.accumulate(tick[::-1])[::-1], decide


def run_variant(history: History, config: Config, variant: Variant, settings: RunSettings,
                mode: str, *, targets: Sequence[TargetConfig] | None = None,
                decision_times: Sequence[float] | None = None,
                seen_at: Sequence[float] | None = None, end: float | None = None,
                starting_orders: Sequence[StartingOrder] = (),
                progress: Callable[[int], None] | None = None,
                keep_trace: bool = False, started_at: float | None = None,
                memories: Mapping[str, MarketMemory] | None = None,
                left_before: Mapping[str, Mapping[int, float]] | None = None,
                unusable_before: Mapping[str, Mapping[int, float]] | None = None,
                kept_away: Mapping[str, Sequence[KeptAway]] | None = None,
                call_times: Mapping[CallKey, float] | None = None,
                unmanaged: Sequence[UnmanagedOrder] = (),
                not_taken: Collection[CallKey] = ()) -> RunRecord:
    """Replay ``history`` with ``variant`` deciding for ``targets`` (default: every configured
    target), in ``mode`` ``replay`` (rivals as recorded) or ``reactive`` (the best rivals answer).

    ``decision_times``/``seen_at``/``end``/``starting_orders`` replay a live session (see
    ``steps`` and the module docstring);
    ``progress(steps_done)`` is called now and then; ``keep_trace`` keeps every step's plan.
    ``started_at``: when the replayed bot run began (default: the first step), from which its
    spot targets' first watch-list round counts. ``memories``: per target, the market memory
    its strategy starts with (``bidder.warmup``; copied, default empty). A replayed bot run's
    own records, which its decisions depended on: ``left_before``, per target, the servers it
    had cancelled orders on before the run (server id -> when: its rebuy block), and
    ``unusable_before``, those of them it had to leave (``left_unusable``), and
    ``kept_away``, per target, the servers it kept away from and when (``bot_server_block``:
    failed rents, refused overclocking, idle servers); ``call_times``, when each of its calls
    was done (by target, kind, server and the decision that made it), where the emulated
    exchange would otherwise take them ``call_latency`` after the decision; ``unmanaged``, the
    orders of ours it did not manage, whose cost came off the targets' budget while they were
    open, as the live engine takes it off; ``not_taken``, its calls the exchange never took (an
    unknown outcome found not done): the replay decides them (they are in its trace), but its
    exchange does not take them either.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    targets = list(config.targets if targets is None else targets)
    missing = sorted({t.market for t in targets} - set(history.markets))
    if missing:
        raise ValueError(f"the history was loaded without the {', '.join(missing)} market")
    run = _Run(history, config, variant, settings, mode, targets, keep_trace, memories or {})
    for name, left in (left_before or {}).items():
        run.exchange.left_at[name].update(left)
    for name, left in (unusable_before or {}).items():
        run.exchange.leaves[name].update({sid: (at, True) for sid, at in left.items()})
    run.kept_away = {name: list(blocks) for name, blocks in (kept_away or {}).items()}
    run.call_times = dict(call_times or {})
    run.not_taken = set(not_taken)
    run.unmanaged = list(unmanaged)
    run.decide_first = settings.fills == "decision" or decision_times is not None
    step_time, step_tick, decide = steps(history, config.bot.decide_interval, decision_times,
                                   seen_at, end)
    step_dt = step_durations(step_time)
    run.started_at = float(step_time[0]) if started_at is None else started_at
    run.start(starting_orders, step_time[0], len(step_time))
    for s, step in enumerate(zip(step_time.tolist(), step_tick.tolist(), decide.tolist(),
                                 step_dt.tolist())):
        run.step(s, *step)
        if progress is not None and (s + 1) % PROGRESS_EVERY == 0:
            progress(s + 1)
    run.exchange.end_all(float(step_time[-1]))
    for record in run.records.values():  # one array each, not one per step: cheap to send back
        record.overpay = [np.concatenate(record.overpay)] if record.overpay else []
        record.overpay_weight = [np.concatenate(record.overpay_weight)] \
            if record.overpay_weight else []
    if progress is not None:
        progress(len(step_time))
    return RunRecord(variant, mode, step_time, step_tick, step_dt, run.records,
                     sum(r.raises for r in run.reactive.values()), run.trace)


def step_durations(step_time: np.ndarray) -> np.ndarray:
    """How long each step lasts (the last one: 0)."""
    return np.append(np.diff(step_time), 0.0)


class _Run:
    """The state of one run while it steps."""

    def __init__(self, history: History, config: Config, variant: Variant, settings: RunSettings,
                 mode: str, targets: list[TargetConfig], keep_trace: bool,
                 memories: Mapping[str, MarketMemory]) -> None:
        self.history = history
        self.config = config
        self.settings = settings
        self.targets = targets
        self.markets = {m: ReplayMarket(history, history.markets[m])
                        for m in sorted({t.market for t in targets})}
        self.caches = {m: StaticMatchCache() for m in self.markets}
        self.strategies = {t.name: variant.instance(t) for t in targets}
        self.memory = {name: copy.deepcopy(memories[name]) if name in memories else MarketMemory()
                       for name, s in self.strategies.items() if getattr(s, "uses_memory", False)}
        """Per target whose strategy looks at how contested servers are."""
        self.started: set[str] = set()
        self.started_at = 0.0
        """The run's start: spot polls from then on count for a spot target's first watch-list
        round (a replayed bot run's own start, else the first step)."""
        self.watched: set[str] = set()
        """Spot targets whose first watch-list round is complete."""
        self.decide_first = settings.fills == "decision"
        """Decide before filling a decision's tick (``RunSettings.fills``)."""
        self.reactive = {m: ReactiveRivals(settings.reactive, history.markets[m].server_id,
                                           in_clore=all(t.currency == CLORE for t in targets
                                                        if t.market == m))
                         for m in self.markets} if mode == "reactive" else {}
        self.exchange = EmulatedExchange(settings.exchange, config.markets,
                                         [(t.name, t.market, t.currency) for t in targets],
                                         self._server_info)
        self.exchange.left_keep = max(self.exchange.left_keep, config.bot.rebuy_block)
        self._rules = {m: config.markets.gigaspot.allocation if m == "gigaspot" else
                       "highest_price" for m in self.markets}
        """Each market's allocation rule."""
        self.target_index = {t.name: k for k, t in enumerate(targets)}
        currencies = {m: {t.currency for t in targets if t.market == m} for m in self.markets}
        self._currency = {m: c.pop() if len(c) == 1 else None for m, c in currencies.items()}
        """The order currency of each market's targets, when they share one."""
        self.pl = np.array([float(t.oc.pl) if t.oc is not None else np.nan for t in targets])
        self.fee = np.array([config.markets.rules(t.market).fee_fraction for t in targets])
        self.units_per_gpu = np.array([t.unit == "gpus" for t in targets])
        self.records: dict[str, TargetRun] = {}
        self.trace: list[tuple[float, Plan]] | None = [] if keep_trace else None
        self._wins: dict[str, tuple[float, np.ndarray]] = {}
        self._arrays: dict[str, tuple[int, list[EmulatedOrder], dict[str, np.ndarray]]] = {}
        self._held: dict[str, _Held] = {}
        self.kept_away: dict[str, list[KeptAway]] = {}
        self.unmanaged: list[UnmanagedOrder] = []
        """Per target: servers it keeps away from, and when: a replayed bot run's own
        (``run_variant``) and those where its orders waited on an idle spot server."""
        self.idle: set[int] = set()
        """Spot servers idle at the current decision (``_idle_spot_servers``)."""
        self.call_times: dict[CallKey, float] = {}
        """A replayed run's recorded call times (``run_variant``)."""
        self.not_taken: set[CallKey] = set()
        """A replayed run's calls the exchange never took (``run_variant``)."""

    def _server_info(self, market: str, server_id: int, currency: str) -> tuple[int, int, float]:
        rm = self.markets[market]
        row = rm.row(server_id)
        if row is None:
            return -1, 0, np.nan
        return row, int(rm.facts["gpus"][row]), float(rm.floor(currency)[row])

    def start(self, starting: Sequence[StartingOrder], t0: float, n_steps: int) -> None:
        for t in self.targets:
            self.records[t.name] = TargetRun(
                t.name, t.market, t.currency, t.count, t.unit,
                np.zeros(n_steps, np.int64), np.zeros(n_steps, np.int64), np.zeros(n_steps),
                np.zeros(n_steps), self.exchange.counters(t.name))
        known = {t.name for t in self.targets}
        for m in self.markets.values():
            m.advance(0)
        for order in starting:
            if order.target not in known:
                raise ValueError(f"starting order for unknown target {order.target!r}")
            birth = int(np.searchsorted(self.history.time, order.created_at, side="right")) - 1
            self.exchange.add_starting(order, birth, t0)

    # --- one step --------------------------------------------------------------------------------

    def step(self, s: int, now: float, tick: int, decide: bool, dt: float) -> None:
        for m in self.markets.values():
            m.advance(tick)
        self.exchange.expire(now)
        rivals = {name: self._rival_prices(name, now) for name in self.markets}
        if decide and self.decide_first:
            self._decide(now, tick, rivals)
        for name in self.markets:
            self._fill(name, s, now, dt, rivals[name])
        if decide and not self.decide_first:
            self._decide(now, tick, rivals)

    def _rival_prices(self, market: str, now: float) -> np.ndarray:
        rm = self.markets[market]
        recorded = rm.rivals["price"]
        agents = self.reactive.get(market)
        if agents is None:
            return recorded
        due = agents.due(now)
        if len(due):
            agents.rest(due)
            _, a = self._orders(market)
            position = np.full(rm.data.n_servers, -1, dtype=np.int64)
            position[a["row"]] = np.arange(len(a["row"]))
            k = position[due]
            rows, k = due[k >= 0], k[k >= 0]
            raised = agents.answer(rows, self._rule(market), our_price=a["price"][k],
                                   our_pl=a["pl"][k], holding=a["winning"][k],
                                   rival_pl=rm.rivals["pl"][rows], gpus=rm.facts["gpus"][rows],
                                   energy_price=rm.energy_price[rows], clore_usd=rm.clore_usd())
            if len(raised):  # the agents now hold those servers: our orders there are outbid
                orders, _ = self._orders(market)
                for index in k[raised].tolist():
                    self.exchange.set_winning(orders[index], False)
                    self.records[orders[index].target].preemptions += 1
        return agents.effective(recorded, rm.rivals["bid_id"])

    def _rule(self, market: str) -> str:
        return self._rules[market]

    def _decide(self, now: float, tick: int, rivals: Mapping[str, np.ndarray]) -> None:
        frames = {name: m.frame(now, rivals[name]) for name, m in self.markets.items()}
        self.idle = self._idle_spot_servers(now)
        decisions = []
        for target in self.targets:
            frame = frames[target.market]
            strategy = self.strategies[target.name]
            static = self.caches[target.market].get(frame, target)
            view = build_target_view(
                frame, target, self.exchange.own_orders(target.name), now=now,
                markets=self.config.markets, static=static,
                recent_wins=self._recent_wins(target, strategy, static, tick),
                thresholds=self._thresholds(target),
                rebuy_block=self.config.bot.rebuy_block,
                left_at=self.exchange.left_at[target.name],
                left_unusable=self.exchange.left_unusable(target.name, now),
                memory=self.memory.get(target.name),
                watching=self._watching(target, frame, now))
            view = self._keep_away(view, now)
            if target.name not in self.started:
                strategy.on_start(view.target)
                self.started.add(target.name)
            decisions.append(TargetDecision(view, safe_decide(strategy, view, log)))
        budget = self.config.budget
        if self.unmanaged and budget.max_per_day is not None:
            budget = budget_left(self.config, [u for u in self.unmanaged if u.created_at <= now and (
                u.closed_at is None or u.closed_at > now)], frames)
        actions = plan(decisions, self.config.markets, budget, now)
        self.exchange.apply(actions, now, tick, (lambda a: self.call_times.get(
            call_key(a, now))) if self.call_times else None,
            hold_back=budget.max_per_day is not None,
            lost=(lambda a: call_key(a, now) in self.not_taken) if self.not_taken else None)
        if self.trace is not None:
            self.trace.append((now, actions))

    def _idle_spot_servers(self, now: float) -> set[int]:
        """Spot servers where offers wait and none runs (rented on demand), but those an order of
        ours was created on lately, and keeping each target's orders there away for a while:
        the live engine's rule (``bidder.engine.idle_spot_servers``, ``IDLE_GRACE``,
        ``_keep_away_from_idle``)."""
        market = self.markets.get("spot")
        idle = market.idle if market is not None else None
        if idle is None or not idle.any():
            return set()
        servers = set(market.data.server_id[idle].tolist())
        orders = [(t.name, o) for t in self.targets for o in self.exchange.own_orders(t.name)]
        servers -= {o.server_id for _, o in orders if now - o.created_at < IDLE_GRACE}
        until = now + self.config.bot.failed_rent_block
        for name, o in orders:
            if o.server_id in servers and not self._blocked(name, o.server_id, now):
                self.kept_away.setdefault(name, []).append(KeptAway(o.server_id, now, until))
        return servers

    def _blocked(self, target: str, server_id: int, now: float) -> bool:
        return any(b.server_id == server_id and b.at <= now and (b.until is None or b.until > now)
                   for b in self.kept_away.get(target, ()))

    def _keep_away(self, view: TargetView, now: float) -> TargetView:
        """``view`` with the servers the target keeps away from now made not eligible (blocks:
        not those its orders are on) and, on spot, the idle ones, as the live engine does."""
        blocks = self.kept_away.get(view.target.name)
        idle = self.idle if view.target.market == "spot" else set()
        if not blocks and not idle:  # the common case: nothing to keep away from
            return view
        own = {o.server_id for o in view.orders}
        avoid = {b.server_id for b in blocks or ()
                 if b.at <= now and (b.until is None or b.until > now)} - own
        avoid |= idle
        if not avoid:
            return view
        c = view.candidates
        return replace(view, candidates=replace(c, eligible=c.eligible & ~np.isin(c.server_id,
                                                                                list(avoid))))

    def _watching(self, target: TargetConfig, frame: MarketFrame, now: float) -> bool:
        """Whether the spot ``target`` is still in its first watch-list round, by the live
        engine's rule (``bidder.watchlist.watch_round_complete``) on the recorded listing and
        polls."""
        if target.market != "spot" or target.name in self.watched:
            return False
        listing = self.markets[target.market].listing(now)
        done = watch_round_complete(target_candidates(listing, target), frame.server_id,
                                    frame.observed_at, since=self.started_at, now=now,
                                    poller=self.config.poller)
        if not done:
            return done is False  # None: nothing listed to watch yet; asked again next time
        self.watched.add(target.name)
        return False

    def _thresholds(self, target: TargetConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """Every server's rival threshold for ``target`` now, from the replayed market, which
        works them out for many ticks at once; None (the view works them out) when reactive
        rivals move the prices."""
        if target.market in self.reactive:
            return None
        return self.markets[target.market].thresholds(
            self._rule(target.market), float(target.oc.pl) if target.oc is not None else None,
            target.currency)

    def _recent_wins(self, target: TargetConfig, strategy: Strategy, match: np.ndarray,
                     tick: int) -> np.ndarray | None:
        """Recorded winning prices per GPU-day on servers ``match`` (the target's static match)
        within the strategy's window, refreshed as ``RECENT_WINS_REFRESHES`` says."""
        window = float(strategy.history_window)
        if window <= 0:
            return None
        now = float(self.history.time[tick])
        cached = self._wins.get(target.name)
        if cached is not None and now - cached[0] < window / RECENT_WINS_REFRESHES:
            return cached[1]
        wins = self.history.markets[target.market].wins
        lo = int(np.searchsorted(self.history.time, now - window, side="left"))
        keep = (wins.first <= tick) & (wins.last >= lo) & match[wins.row]
        prices = wins.price_per_gpu[keep]
        self._wins[target.name] = (now, prices)
        return prices

    def _orders(self, market: str) -> tuple[list[EmulatedOrder], dict[str, np.ndarray]]:
        """Our orders on ``market`` and their columns (rebuilt only when orders changed)."""
        cached = self._arrays.get(market)
        if cached is not None and cached[0] == self.exchange.version:
            return cached[1], cached[2]
        orders = [o for o in self.exchange.orders.values() if o.market == market]
        index = np.array([self.target_index[o.target] for o in orders], dtype=np.int64)
        arrays = {
            "row": np.array([o.row for o in orders], dtype=np.int64),
            "price": np.array([o.price for o in orders], dtype=np.float64),
            "birth": np.array([o.birth for o in orders], dtype=np.int64),
            "gpus": np.array([o.gpus for o in orders], dtype=np.int64),
            "target": index,
            "pl": self.pl[index],
            "winning": np.array([o.winning for o in orders], dtype=bool),
        }
        self._arrays[market] = (self.exchange.version, orders, arrays)
        return orders, arrays

    def _fill(self, market: str, s: int, now: float, dt: float, rival_price: np.ndarray) -> None:
        """Who holds what during this step; recomputed only when our orders, their servers'
        market or (``host_profit``) the CLORE rate changed since the last step, and the book of
        our servers only when the servers or their market did."""
        orders, a = self._orders(market)
        if not orders:
            return
        rm = self.markets[market]
        held = self._held.get(market)
        key = self._fill_key(market)
        rows = a["row"]
        book_key = (key[1], rows.tobytes(), a["pl"].tobytes())
        same_book = held is not None and held.book_key == book_key \
            and rm.changed_at[rows].max() <= held.tick
        if held is None or not same_book or held.key != key:
            if held is None or not same_book:
                book = self._book(market, orders, a, rival_price)
                bout = contest(self._rule(market), self.settings.exchange.payment, book,
                               price=a["price"], birth=a["birth"], our_pl=a["pl"])
            elif held.key[0] != key[0]:  # the same servers: only our prices may have moved
                bout = held.contest.priced(a["price"], a["birth"])
            else:
                bout = held.contest
            held = self._settle(market, now, orders, a, rival_price, bout, key, book_key)
            self._held[market] = held
        for k, target_index in enumerate(held.targets):
            record = self.records[self.targets[target_index].name]
            paid = held.paid[k]
            record.held_units[s] = held.units[k]
            record.held_gpus[s] = held.gpus[k]
            record.paid_per_day[s] = paid
            record.marginal_per_day[s] = held.marginal[k]
            record.price_cost += paid * dt / DAY
            record.fee_cost += paid * self.fee[target_index] * dt / DAY
            if dt > 0:
                record.overpay.append(held.overpay[k])
                record.overpay_weight.append(held.overpay_gpus[k] * dt)

    def _fill_key(self, market: str) -> tuple[object, ...]:
        """What, besides the recorded data of our orders' servers, a fill depends on: our orders,
        the reactive rivals (the first two make the book), the CLORE rate under ``host_profit``."""
        agents = self.reactive.get(market)
        clore = self.markets[market].clore_usd() if self._rule(market) == "host_profit" else None
        return self.exchange.version, -1 if agents is None else agents.version, clore

    def _book(self, market: str, orders: list[EmulatedOrder], a: dict[str, np.ndarray],
              rival_price: np.ndarray) -> Book:
        currency = self._currency[market]
        return self.markets[market].book(
            a["row"], currency if currency is not None else
            np.array([o.currency for o in orders], dtype=object), rival_price)

    def _settle(self, market: str, now: float, orders: list[EmulatedOrder],
                a: dict[str, np.ndarray], rival_price: np.ndarray, bout: Contest,
                key: tuple[object, ...], book_key: tuple[object, ...]) -> _Held:
        rm = self.markets[market]
        result = bout.at(rm.clore_usd())
        win, was = result.win, a["winning"]
        if (win != was).any():
            for k in np.flatnonzero(win != was).tolist():
                self.exchange.set_winning(orders[k], bool(win[k]))
                if was[k]:
                    self.records[orders[k].target].preemptions += 1
            taken = np.flatnonzero(win & ~was)
            agents = self.reactive.get(market)
            if agents is not None and len(taken):
                rows = a["row"][taken]
                agents.taken(rows, now, rm.rivals["bid_id"][rows], rival_price[rows],
                             rm.rivals["cap_hint"][rows])
        held = _Held(key, rm.tick, bout, book_key)
        won = win.nonzero()[0]
        if not len(won):
            return held
        tidx = a["target"][won]
        gpus = bout.book.gpus[won].astype(np.int64)
        paid, marginal = result.paid[won], result.marginal[won]
        overpay = (paid - marginal) / np.maximum(gpus, 1)
        targets = sorted(set(tidx.tolist()))
        for k in targets:
            mine = slice(None) if len(targets) == 1 else tidx == k
            held.targets.append(k)
            held.gpus.append(int(gpus[mine].sum()))
            held.units.append(held.gpus[-1] if self.units_per_gpu[k] else len(gpus[mine]))
            held.paid.append(float(paid[mine].sum()))
            held.marginal.append(float(marginal[mine].sum()))
            held.overpay.append(overpay[mine])
            held.overpay_gpus.append(gpus[mine])
        return held


@dataclass(slots=True)
class _Held:
    """What one market's fill means per target holding something (``targets``: their indexes),
    valid while its key holds and our orders' servers see no recorded change after ``tick``."""

    key: tuple[object, ...]
    """``_Run._fill_key`` when it was computed"""
    tick: int
    contest: Contest
    """Our orders against the market around their servers (its ``book``), which holds while the
    reactive rivals stand still, we hold the same servers at the same power limits
    (``book_key``), and those servers see no recorded change"""
    book_key: tuple[object, ...]
    targets: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    paid: list[float] = field(default_factory=list)
    marginal: list[float] = field(default_factory=list)
    overpay: list[np.ndarray] = field(default_factory=list)
    overpay_gpus: list[np.ndarray] = field(default_factory=list)

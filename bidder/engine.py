"""One decide/execute cycle: market data -> views -> strategies -> rules -> executor -> record.

The same frame, view, strategy and rules code as the backtester, on the newest recorded market:

1. reconcile first when ``reconcile_interval`` has passed, or an order is in flight and the last
   reconciliation is ``IN_FLIGHT_RECHECK`` seconds old (live only);
2. build each market's frame (``storage.market_views``) and refresh our orders' market states;
3. per target: its view (``bidder.view``), minus the servers it keeps away from, with our
   orders as ``OwnOrder``s, and recent winning prices when its strategy wants them; the strategy's
   wish through ``safe_decide``;
4. ``bidder.rules.plan`` over every target (a target whose market data is stale still takes part
   with "no change", so the budget and the one-order-per-server rule see its orders);
5. record the cycle and each target's decision (what a replay compares), then execute; then the
   heartbeat.

A market whose data is missing or stale is never decided on (every strategy would ask to cancel
everything it cannot see); when no market is fresh the cycle is skipped and says why.

Dry run: the frame's "mine" flags are cleared (the account's real orders are rivals of the virtual
ones), and a virtual order wins only when its price beats the threshold the recorded bids set, the
same allocation rule the exchange applies: no easier fills.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from bidder.clock import Clock
from bidder.config import BudgetConfig, Config, MarketName, Mode, TargetConfig
from bidder.executor import Execution, Executor
from bidder.orders import (
    IDLE_GRACE,
    RETURN_WINDOW,
    by_target,
    keep_away,
    kept_away,
    left_unusable,
    open_orders,
    own_order,
    recently_cancelled,
    set_market_state,
    update_market_states,
)
from bidder.reconcile import in_flight
from bidder.rules import Plan, TargetDecision, action_json, budget_left, plan
from bidder.memory import MarketMemory
from bidder.view import StaticMatchCache, build_target_view
from bidder.warmup import warm_memories
from bidder.watchlist import listing_frame, target_candidates, watch_round_complete
from storage.frames import MarketFrame
from storage.history import bid_intervals
from storage.market_views import gigaspot_frame, spot_frame
from storage.models import (
    BotCycle,
    BotDecision,
    BotOrder,
    BotRun,
    SpotOffer,
    SpotOfferCurrency,
    SpotPoll,
)
from strategies.base import OwnOrder, Strategy, TargetView
from strategies.registry import load_strategy, safe_decide

log = logging.getLogger(__name__)

IN_FLIGHT_RECHECK = 10.0
"""Seconds between reconciliations while an order is in flight. Its outcome is settled by
``my_orders`` and by snapshots newer than the send, over up to ``create_grace_seconds``: asking
every cycle (a 1-s decide interval) would spend the whole rate budget on ``my_orders`` and starve
the pollers whose snapshots settle it."""


STALE_POLLS = 5
"""A market's data is stale after this many of its poll intervals without a successful poll."""
MIN_STALE_AFTER = 300.0
"""Seconds: never call data stale sooner (a busy rate budget delays polls)."""
SPOT_FRAME_MAX_AGE = 6 * 3600.0
"""Seconds: a spot server not polled for this long is left out of the view (its offers are too
old to bid on; the poller comes back to it)."""


def stale_after(config: Config, market: str) -> float:
    """Seconds after its last successful poll that a market's data is too old to decide on."""
    interval = (config.poller.gigaspot_interval if market == "gigaspot"
                else config.poller.spot_interval)
    return max(STALE_POLLS * interval, MIN_STALE_AFTER)


def idle_spot_servers(frame: MarketFrame) -> set[int]:
    """Spot servers where offers wait but none runs. The spot poll does not say a server is rented
    on demand (only the next marketplace listing will); waiting offers and no running one say it
    now: nobody, we included, can win it."""
    if frame.market != "spot" or not frame.n_servers:
        return set()
    bids = np.diff(frame.bid_start)
    running = np.bincount(frame.bid_server_rows()[frame.bid_active], minlength=frame.n_servers)
    return set(frame.server_id[(bids > 0) & (running == 0)].tolist())


def recent_wins(session: Session, market: str, server_id: np.ndarray, gpus: np.ndarray,
                since: float, until: float, *, currency: str | None = None,
                usd_rate: Callable[[str], float] | None = None) -> np.ndarray:
    """Winning prices per GPU-day recorded on ``server_id`` between ``since`` and ``until``: every
    version of an active GigaSPOT bid, every active offer of a spot poll; ours left out (what we
    paid says nothing about what the market asks), as the backtester leaves them out."""
    if not len(server_id):
        return np.empty(0)
    size = dict(zip(server_id.tolist(), np.maximum(gpus, 1).tolist()))
    if market == "gigaspot":
        bids = bid_intervals(session, since, until, machine_ids=size)
        mine = bids.snapshots.my_user_id
        won = bids.active & ~np.isin(bids.owner, mine[mine >= 0])
        per_gpu = np.array([size[m] for m in bids.machine_id[won].tolist()], dtype=np.float64)
        return bids.price[won] / per_gpu if len(per_gpu) else np.empty(0)
    oc = SpotOfferCurrency
    rows = session.execute(
        select(SpotPoll.server_id, SpotOffer.bid, oc.currency)
        .join(SpotPoll, SpotPoll.id == SpotOffer.poll_id)
        .outerjoin(oc, and_(oc.poll_id == SpotOffer.poll_id, oc.offer_id == SpotOffer.offer_id))
        .where(SpotOffer.active.is_(True), SpotPoll.polled_at >= since,
               SpotOffer.my.is_(False), SpotPoll.polled_at <= until,
               SpotPoll.server_id.in_(list(size)))).all()
    factors = {None: 1.0, currency: 1.0}
    for stated in {c for _, _, c in rows} - factors.keys():
        # an offer stated in another currency, at today's rates; one that cannot be converted is
        # left out (its price is unknown, never cheap)
        to = usd_rate(currency) if usd_rate is not None and currency is not None else math.nan
        rate = usd_rate(stated) if usd_rate is not None else math.nan
        factors[stated] = rate / to if 0 < rate < math.inf and 0 < to < math.inf else math.nan
    wins = np.array([bid * factors[c] / size[sid] for sid, bid, c in rows], dtype=np.float64)
    return wins[~np.isnan(wins)]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def own_order_json(order: OwnOrder) -> dict[str, Any]:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(order).items()}


@dataclass(frozen=True, slots=True)
class CycleResult:
    cycle_id: int
    skipped: str | None = None
    plan: Plan | None = None
    execution: Execution | None = None


class Engine:
    """Runs cycles for one bot run (``run_id``) in ``mode``.

    ``checked_at(market)`` says when that market's data was last polled successfully (None: not in
    this run); ``halted()`` whether ``cancel-all`` asked the bot to stop.
    """

    def __init__(self, config: Config, sessions: sessionmaker[Session], clock: Clock,
                 executor: Executor, *, run_id: int, mode: Mode, wall: Clock,
                 checked_at: Callable[[str], float | None],
                 halted: Callable[[], bool] = lambda: False,
                 stop: threading.Event | None = None) -> None:
        self._config = config
        self._sessions = sessions
        self._clock = clock
        self._wall = wall
        self.executor = executor
        self._run_id = run_id
        self._mode = mode
        self._checked_at = checked_at
        self._halted = halted
        self._stop = stop if stop is not None else threading.Event()
        self._strategies: dict[str, Strategy] = {
            t.name: load_strategy(t.strategy, t.strategy_params) for t in config.targets}
        self._started: set[str] = set()
        self._memory = {name: MarketMemory() for name, s in self._strategies.items()
                        if s.uses_memory}
        """Per target whose strategy looks at how contested servers are."""
        self._warmed = not self._memory
        """Whether the memories took in the market recorded before this run (``bidder.warmup``)."""
        self._since: float | None = None
        """This run's start (``BotRun.started_at``): spot polls from then on count for a spot
        target's first watch-list round."""
        self._watched: set[str] = set()
        """Spot targets whose first watch-list round is complete."""
        self._caches = {"spot": StaticMatchCache(), "gigaspot": StaticMatchCache()}
        self._markets: tuple[MarketName, ...] = tuple(sorted({t.market for t in config.targets}))
        self._stale: set[str] = set()

    @property
    def dry_run(self) -> bool:
        return self.executor.dry_run

    # --- the cycle -------------------------------------------------------------------------------

    def cycle(self) -> CycleResult:
        if self._halted():
            log.warning("halted by bidder cancel-all: no more orders; stopping")
            self._stop.set()
            return self._skip("halted by cancel-all", {})
        with self._sessions() as session:
            waiting = not self.dry_run and in_flight(session)
            frames = self._frames(session)  # reconciliation changes orders, not market data
        since = self._clock.now() - self.executor.last_reconcile
        due = since >= self._config.bot.reconcile_interval
        if not self.dry_run and (due or (waiting and since >= IN_FLIGHT_RECHECK)):
            self.executor.reconcile()
        now = self._clock.now()
        fresh = {m: self._fresh(m, frames[m], now) for m in self._markets}
        if not any(fresh.values()):
            return self._skip("; ".join(self._why_stale(m, frames[m], now) for m in self._markets)
                              or "no targets", frames)
        if not self._warmed:
            self._warm_memory()
        with self._sessions.begin() as session:
            orders = open_orders(session, dry_run=self.dry_run)
            missing = set() if self.dry_run else {
                o.id for o in update_market_states(session, orders, frames, now)}
            if missing:
                self.executor.reconcile_soon()  # they may have ended
            decisions, views = self._decide(session, frames, fresh, orders, missing, now)
            budget = budget_left(self._config, [o for o in orders if o.target is None], frames)
            the_plan = plan(decisions, self._config.markets, budget, now)
            cycle_id = self._record(session, now, frames, decisions, the_plan)
        self.executor.journal.cycle_id = cycle_id
        execution = self.executor.execute(the_plan, views)
        self._heartbeat()
        return CycleResult(cycle_id, None, the_plan, execution)

    def _warm_memory(self) -> None:
        """Once, before the first decision: the market memory this run would have had, had it been
        running, from the market recorded before its start; its replay does the same."""
        self._warmed = True
        targets = [t for t in self._config.targets if t.name in self._memory]
        try:
            with self._sessions() as session:
                run = session.get(BotRun, self._run_id)
                until = run.started_at if run is not None else self._clock.now()
                warmed = warm_memories(session, self._config, targets, until=until)
        except Exception as err:  # noqa: BLE001 - the bot runs on with empty memories
            log.warning("market memory starts empty: reading the recorded market failed (%s)",
                        type(err).__name__)
            return
        self._memory.update(warmed.memories)
        log.info("%s (%s)", warmed.describe(), ", ".join(t.name for t in targets))

    def _skip(self, reason: str, frames: Mapping[str, MarketFrame]) -> CycleResult:
        with self._sessions.begin() as session:
            session.add(row := self._cycle_row(self._clock.now(), frames, reason, 0))
        self._heartbeat()
        return CycleResult(row.id, reason)

    def _frames(self, session: Session) -> dict[str, MarketFrame]:
        frames = {m: (gigaspot_frame(session) if m == "gigaspot"
                      else spot_frame(session, max_age=SPOT_FRAME_MAX_AGE))
                  for m in self._markets}
        if self.dry_run:  # the account's real bids compete with our virtual ones
            frames = {m: replace(f, bid_mine=np.zeros_like(f.bid_mine)) for m, f in frames.items()}
        return frames

    def _fresh(self, market: str, frame: MarketFrame, now: float) -> bool:
        checked = self._checked_at(market)
        ok = (frame.n_servers > 0 and checked is not None
              and now - checked <= stale_after(self._config, market))
        if ok and market in self._stale:
            self._stale.discard(market)
            log.info("%s market data is fresh again", market)
        elif not ok and market not in self._stale:
            self._stale.add(market)
            level = logging.INFO if checked is None else logging.WARNING
            log.log(level, "not deciding %s targets: %s", market,
                    self._why_stale(market, frame, now))
        return ok

    def _why_stale(self, market: str, frame: MarketFrame, now: float) -> str:
        checked = self._checked_at(market)
        if checked is None:
            return f"waiting for the first {market} poll"
        if frame.n_servers == 0:
            return f"no {market} market data recorded"
        return f"{market} data last polled {now - checked:.0f} s ago"

    def _decide(self, session: Session, frames: Mapping[str, MarketFrame],
                fresh: Mapping[str, bool], orders: Sequence[BotOrder], missing: set[int],
                now: float) -> tuple[list[TargetDecision], dict[str, TargetView]]:
        grouped = by_target(orders)
        blocks = kept_away(session, now)
        unmanaged = {o.server_id for o in grouped.get(None, [])}
        settling = {o.server_id for o in orders
                    if o.confirmed_at is None or now - o.confirmed_at < IDLE_GRACE}
        idle = (idle_spot_servers(frames["spot"]) - settling) if "spot" in frames else set()
        self._keep_away_from_idle(session, orders, idle, blocks, now)
        decisions: list[TargetDecision] = []
        views: dict[str, TargetView] = {}
        for target in self._config.targets:
            rows = grouped.get(target.name, [])
            if not fresh[target.market] and not rows:
                continue
            own = {o.server_id for o in rows}
            avoid = (blocks.get(target.name, set()) | unmanaged) - own
            if target.market == "spot":
                avoid |= idle
            view = self._view(session, target, frames[target.market], rows, missing, avoid, now)
            views[target.name] = view
            desired = None
            if fresh[target.market]:
                strategy = self._strategies[target.name]
                if target.name not in self._started:
                    self._started.add(target.name)
                    strategy.on_start(view.target)
                desired = safe_decide(strategy, view, log)
            decisions.append(TargetDecision(view, desired))
        return decisions, views

    def _keep_away_from_idle(self, session: Session, orders: Sequence[BotOrder], idle: set[int],
                             blocks: dict[str, set[int]], now: float) -> None:
        """A server where our order waits and nothing runs is taken for a while: block it, so that
        the target does not come back as soon as its order there is cancelled."""
        until = now + self._config.bot.failed_rent_block
        for order in orders:
            if order.target is None or order.server_id not in idle \
                    or order.server_id in blocks.get(order.target, set()):
                continue
            keep_away(session, order.server_id, order.target, "idle: offers wait, none runs",
                      until, now)
            blocks.setdefault(order.target, set()).add(order.server_id)
            log.info("spot server %d runs no offer although ours waits (rented on demand?); "
                     "%r moves elsewhere", order.server_id, order.target)

    def _view(self, session: Session, target: TargetConfig, frame: MarketFrame,
              rows: Sequence[BotOrder], missing: set[int], avoid: set[int],
              now: float) -> TargetView:
        """The target's view; ``avoid``: servers it must not hold (made not eligible)."""
        markets = self._config.markets
        own = [own_order(o, markets, state="pending" if o.id in missing else None) for o in rows]
        block = self._config.bot.rebuy_block
        left = recently_cancelled(session, target.name, now - block, dry_run=self.dry_run) \
            if block > 0 else None
        returns = left_unusable(session, target.name, now - RETURN_WINDOW, dry_run=self.dry_run)
        view = build_target_view(frame, target, own, now=now, markets=markets,
                                 rebuy_block=block, left_at=left, left_unusable=returns,
                                 memory=self._memory.get(target.name),
                                 static=self._caches[target.market].get(frame, target),
                                 watching=self._watching(session, target, frame, now))
        c = view.candidates
        if avoid:
            eligible = c.eligible & ~np.isin(c.server_id, list(avoid))
            view = replace(view, candidates=replace(c, eligible=eligible))
        if self.dry_run:
            view = self._virtual_fills(session, view, frame, rows, now)
        window = self._strategies[target.name].history_window
        if window > 0:
            c = view.candidates
            wins = recent_wins(session, target.market, c.server_id[c.eligible],
                               c.gpus[c.eligible], now - window, now,
                               currency=target.currency, usd_rate=frame.usd_rate)
            view = replace(view, recent_wins=wins)
        return view

    def _watching(self, session: Session, target: TargetConfig, frame: MarketFrame,
                  now: float) -> bool:
        """Whether the spot ``target`` is still in its first watch-list round of this run
        (``bidder.watchlist.watch_round_complete``; the backtest asks the same)."""
        if target.market != "spot" or target.name in self._watched:
            return False
        if self._since is None:
            run = session.get(BotRun, self._run_id)
            self._since = run.started_at if run is not None else now
        listing = listing_frame(session)
        candidates = target_candidates(listing, target) if listing is not None else []
        done = watch_round_complete(candidates, frame.server_id, frame.observed_at,
                                    since=self._since, now=now, poller=self._config.poller)
        if not done:
            return done is False  # None: nothing listed to watch yet; asked again next time
        self._watched.add(target.name)
        log.info("spot target %r: its %d candidates polled once; it may now create orders",
                 target.name, len(candidates))
        return False

    def _virtual_fills(self, session: Session, view: TargetView, frame: MarketFrame,
                       rows: Sequence[BotOrder], now: float) -> TargetView:
        """A virtual order wins only on a server that can be won now (online, rentable: what the
        backtest's fills ask too) and only if its price beats the recorded rivals' threshold."""
        c = view.candidates
        orders = []
        for order in rows:
            row = c.row(order.server_id)
            at = frame.row(order.server_id)
            # an unknown (NaN) threshold or floor never lets it win
            wins = row is not None and at is not None \
                and bool(frame.online[at]) and bool(frame.rentable[at]) \
                and order.price > c.threshold[row] and order.price >= c.floor[row]
            state = "winning" if wins else "outbid"
            set_market_state(session, order, state, now)
            orders.append(own_order(order, self._config.markets, state=state))
        return replace(view, orders=tuple(orders))

    # --- records ---------------------------------------------------------------------------------

    def _record(self, session: Session, now: float, frames: Mapping[str, MarketFrame],
                decisions: Sequence[TargetDecision], the_plan: Plan) -> int:
        cycle = self._cycle_row(now, frames, None, len(the_plan.actions))
        session.add(cycle)
        session.flush()
        for d in decisions:
            name = d.view.target.name
            target = next(t for t in self._config.targets if t.name == name)
            session.add(BotDecision(
                cycle_id=cycle.id, target=name, strategy=target.strategy,
                params=dict(target.strategy_params),
                orders=[own_order_json(o) for o in d.view.orders],
                desired=None if d.desired is None else [asdict(b) for b in d.desired],
                actions=[action_json(a) for a in the_plan.actions if a.target == name],
                deferred=[asdict(x) for x in the_plan.deferred if x.target == name]))
        return cycle.id

    def _cycle_row(self, now: float, frames: Mapping[str, MarketFrame], skipped: str | None,
                   actions: int) -> BotCycle:
        def used(market: str) -> float | None:
            frame = frames.get(market)
            return frame.time if frame is not None and frame.n_servers else None

        return BotCycle(run_id=self._run_id, at=now, wall_at=self._wall.now(), mode=self._mode,
                        spot_frame_time=used("spot"), gigaspot_frame_time=used("gigaspot"),
                        skipped=skipped, actions=actions)

    def _heartbeat(self) -> None:
        """Written after the cycle's work: a bot stuck or failing in every cycle goes stale."""
        with self._sessions.begin() as session:
            session.execute(update(BotRun).where(BotRun.id == self._run_id).values(
                heartbeat_at=self._clock.now(), heartbeat_wall=self._wall.now()))


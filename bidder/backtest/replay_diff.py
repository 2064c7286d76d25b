"""``--replay-diff``: replay the period a bot run covered and show where the backtest parts from it.

The backtest is only worth trusting if, fed what the bot saw, it does what the bot did and pays
what the bot paid. This replays one recorded run (live, sim or dry-run) through the backtester with
the run's own recorded config and strategies, deciding at the run's cycle times on the market data
each cycle saw (``seen_at``), starting from the orders the run found open, and with what else the
bot's decisions depended on: the market memory it warmed at its start (``bidder.warmup``), the
servers it had cancelled orders on within its rebuy block before the run, the servers it kept
away from (its recorded blocks), and the times its calls were done (the cooldown runs from them).
A dry run is replayed against an exchange that refuses nothing, as its virtual one. It compares:

- decisions: per decided cycle, the actions the bot planned against the actions the replay
  planned (kind, server, price); after the first difference the two follow different books, so
  that first difference is the one to read;
- costs: per target, what the exchange billed the run's own orders (their ``spend`` from
  ``my_orders``, final spend included) against what the replay's fill model charged over the same
  time (price x time held, fees apart; a dry run's bill is its virtual fills'). Orders that were
  already open when the run started are replayed but left out of the cost (their spend before
  the start is unknown), and the report says how many.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from bidder.backtest.data import HistoryError, load_history
from bidder.backtest.exchange import StartingOrder
from bidder.backtest.runner import (
    AS_CONFIGURED,
    DAY,
    CallKey,
    KeptAway,
    RunRecord,
    RunSettings,
    UnmanagedOrder,
    run_variant,
)
from bidder.config import Config, ConfigError, parse_config
from bidder.orders import RETURN_WINDOW, SPEND_AT_STOP, left_unusable, recently_cancelled
from bidder.rules import Plan, StepKnowledge, action_json
from bidder.status import fmt_utc
from bidder.warmup import warm_memories
from storage.models import (
    ApiCall,
    BotCycle,
    BotDecision,
    BotOrder,
    BotOrderEvent,
    BotRun,
    ServerBlock,
)

PRICE_TOLERANCE = 1e-9
"""Relative: two planned prices this close are the same decision."""
SHOWN_DIFFERENCES = 10


class ReplayDiffError(ValueError):
    """The database holds no run that can be replayed (the message says why)."""


ActionKey = tuple[str, str, int, float]
"""(target, kind, server id, price; 0 for a cancel)"""


@dataclass(frozen=True, slots=True)
class RecordedCycle:
    at: float
    seen_at: float
    """The newest market data the cycle decided on."""
    data_from: float
    """The oldest of its markets' data (the replay's history starts there)."""
    actions: tuple[ActionKey, ...]


@dataclass(slots=True)
class RecordedRun:
    """What one bot run did, as the database recorded it."""

    run_id: int
    mode: str
    config: Config
    started_at: float
    end: float
    """Costs are compared up to here: the run's last ``my_orders`` sync (live, sim), else its last
    cycle."""
    cycles: list[RecordedCycle]
    starting: list[StartingOrder]
    billed: dict[str, float]
    """Per target: what the exchange billed the orders the run created (price x time, no fees)."""
    left_before: dict[str, dict[int, float]] = field(default_factory=dict)
    """Per target: servers where the bot had cancelled an order within its rebuy block before
    the run started (an earlier run's cancels still block rebuying)."""
    kept_away: dict[str, list[KeptAway]] = field(default_factory=dict)
    """Per target: the servers the bot kept away from during the run (its ``bot_server_block``
    rows, and servers of orders it did not manage), when."""
    call_times: dict[CallKey, float] = field(default_factory=dict)
    """When each of the run's calls was done, by the decision that made it: the bot records an
    order's creation and lowerings when the call returns (``call_times`` of ``run_variant``)."""
    outlived: set[str] = field(default_factory=set)
    """Targets with an order the run left open into the next run whose spend at the run's stop
    was not recorded (the bot did not stop cleanly): their bill holds the next run's spend."""
    unmanaged: list[UnmanagedOrder] = field(default_factory=list)
    """The orders of ours no target managed while the run was on: their cost came off the
    budget the targets shared."""
    unusable_before: dict[str, dict[int, float]] = field(default_factory=dict)
    """Per target: servers the bot had to leave (``left_unusable``) within ``RETURN_WINDOW``
    before the run started, which its strategy may come back to."""
    not_taken: set[CallKey] = field(default_factory=set)
    """The run's price changes and cancels whose outcome was unknown (a timeout, a server error)
    and that reconciliation then found not done: the exchange never took them (``_not_taken``)."""


@dataclass(frozen=True, slots=True)
class CycleDiff:
    at: float
    bot: tuple[ActionKey, ...]
    replay: tuple[ActionKey, ...]


@dataclass(frozen=True, slots=True)
class CostDiff:
    target: str
    currency: str
    bot: float
    replay: float
    comparable: bool
    """False when the target had orders open at the start (the replay pays for them, the bot's
    bill, its own orders' spend, cannot), or left one open into the next run without recording
    its spend at the stop (the bill holds the next run's spend too)."""
    why_not: str | None = None
    """``carried`` or ``outlived`` when not comparable."""

    @property
    def gap(self) -> float:
        """(replay - bot) / bot; NaN when not comparable or the bot paid nothing."""
        return (self.replay - self.bot) / self.bot if self.comparable and self.bot > 0 \
            else math.nan


@dataclass(slots=True)
class ReplayDiff:
    run: RecordedRun
    differences: list[CycleDiff] = field(default_factory=list)
    costs: list[CostDiff] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return len(self.run.cycles)


# --- reading the run ----------------------------------------------------------------------------


def load_run(session: Session, run_id: int | None = None) -> RecordedRun:
    """The run ``run_id`` (default: the newest) with its decided cycles, starting orders and bill."""
    query = select(BotRun).order_by(BotRun.id.desc())
    run = session.scalars(query.where(BotRun.id == run_id) if run_id is not None else query).first()
    if run is None:
        raise ReplayDiffError("no bot run recorded in this database" if run_id is None
                              else f"no bot run with id {run_id} in this database")
    try:
        config = parse_config(run.config, f"the config recorded by run {run.id}")
    except ConfigError as err:
        raise ReplayDiffError(f"run {run.id} cannot be replayed: {err}") from None
    cycles = _cycles(session, run.id)
    if not cycles:
        raise ReplayDiffError(f"run {run.id} ({run.mode}) never decided: nothing to replay")
    start = cycles[0].at
    until = session.scalar(select(BotRun.started_at).where(BotRun.id > run.id)
                           .order_by(BotRun.id).limit(1))
    end = _last_sync(session, run.started_at, until) if run.mode != "dry-run" else None
    end = end if end is not None else cycles[-1].at
    orders = list(session.scalars(select(BotOrder).where(
        BotOrder.target.is_not(None), BotOrder.state != "failed",
        BotOrder.dry_run.is_(run.mode == "dry-run"), BotOrder.created_at <= end,
        or_(BotOrder.closed_at.is_(None), BotOrder.closed_at > start))))
    events = _events(session, [o.id for o in orders])
    billed: dict[str, float] = {t.name: 0.0 for t in config.targets}
    starting = []
    outlived: set[str] = set()
    for order in orders:
        if order.created_at < run.started_at:
            starting.append(_starting(order, events.get(order.id, []), run.started_at))
        elif order.target in billed:
            if order.dry_run:
                billed[order.target] += _virtual_bill(order, events.get(order.id, []), end)
                continue
            spend = order.spend or 0.0
            if until is not None and (order.closed_at is None or order.closed_at > until):
                # open into the next run: its spend now counts that run's too
                at_stop = [d["spend"] for _, kind, _, d in events.get(order.id, [])
                           if kind == SPEND_AT_STOP and d and d.get("run_id") == run.id]
                if at_stop:
                    spend = float(at_stop[-1] or 0.0)  # None: never known, as for any run
                else:
                    outlived.add(order.target)
            billed[order.target] += spend
    dry_run = run.mode == "dry-run"
    block = config.bot.rebuy_block
    left_before = {t.name: recently_cancelled(session, t.name, run.started_at - block,
                                              dry_run=dry_run, before=run.started_at)
                   for t in config.targets} if block > 0 else {}
    unusable_before = {t.name: left_unusable(session, t.name, run.started_at - RETURN_WINDOW,
                                             dry_run=dry_run, before=run.started_at)
                       for t in config.targets}
    unmanaged = _unmanaged(session, run.started_at, end, dry_run)
    return RecordedRun(run.id, run.mode, config, run.started_at, end, cycles, starting, billed,
                       left_before, _kept_away(session, config, run.started_at, end, unmanaged),
                       _call_times(orders, events, [c.at for c in cycles]), outlived, unmanaged,
                       unusable_before, _not_taken(orders, events, cycles))


CALL_EVENTS = {"created": "create", "raised": "raise", "lowered": "lower"}
"""Order events that say when a call of the kind was done."""


def _call_times(orders: Sequence[BotOrder], events: dict[int, list[Event]],
                cycle_at: Sequence[float]) -> dict[CallKey, float]:
    """Per call of the run (target, kind, server, the decision that made it, which is the last
    cycle at or before it): when it was done."""
    out: dict[CallKey, float] = {}
    first = cycle_at[0]
    for order in orders:
        if order.target is None:
            continue
        for at, kind, _, detail in events.get(order.id, []):
            call = CALL_EVENTS.get(kind)
            if call is None and kind == "closed" and detail \
                    and str(detail.get("reason", "")).startswith("cancelled"):
                call = "cancel"
            if call is None or at < first:
                continue
            decided = cycle_at[bisect.bisect_right(cycle_at, at) - 1]
            out[(order.target, call, order.server_id, decided)] = at
    return out


def _not_taken(orders: Sequence[BotOrder], events: dict[int, list[Event]],
               cycles: Sequence[RecordedCycle]) -> set[CallKey]:
    """The run's calls (target, kind, server, the decision that made it) that the exchange never
    took: a price change or cancel whose outcome was unknown (``outcome_unknown`` with an error:
    a timeout, a server error; not a lowering the exchange answered as refused, which the replay
    models itself) that the next ``resolved`` found not done (the order open, at its old
    price). The bot tries again at a later decision; the replay must not have it done at the
    first, or its cooldowns and step knowledge run ahead of the bot's."""
    cycle_at = [c.at for c in cycles]
    actions = {c.at: c.actions for c in cycles}
    out: set[CallKey] = set()
    for order in orders:
        if order.target is None:
            continue
        trail = events.get(order.id, [])
        for i, (at, kind, price, detail) in enumerate(trail):
            if kind != "outcome_unknown" or not detail or not detail.get("error") \
                    or detail.get("call") not in ("price change", "cancel") or at < cycle_at[0]:
                continue
            after = next(((k, p) for _, k, p, _ in trail[i + 1:]
                          if k in ("resolved", "closed", "reopened")), None)
            if after is None or after[0] != "resolved" or after[1] != price:
                continue  # done after all (closed, or at a new price), or never known
            decided = cycle_at[bisect.bisect_right(cycle_at, at) - 1]
            kinds = ("cancel",) if detail["call"] == "cancel" else ("raise", "lower")
            out.update((t, k, sid, decided) for t, k, sid, _ in actions[decided]
                       if t == order.target and sid == order.server_id and k in kinds)
    return out


def _kept_away(session: Session, config: Config, start: float, end: float,
               unmanaged: Sequence[UnmanagedOrder]) -> dict[str, list[KeptAway]]:
    """What the live engine kept each target away from between ``start`` and ``end``: its
    server blocks, and the servers of the ``unmanaged`` orders (every target's)."""
    out: dict[str, list[KeptAway]] = {t.name: [] for t in config.targets}
    for target, server_id, at, until in session.execute(
            select(ServerBlock.target, ServerBlock.server_id, ServerBlock.at, ServerBlock.until)
            .where(ServerBlock.at <= end, or_(ServerBlock.until.is_(None),
                                               ServerBlock.until > start))):
        if target in out:
            out[target].append(KeptAway(int(server_id), float(at), until))
    for u in unmanaged:
        for blocks in out.values():
            blocks.append(KeptAway(u.server_id, u.created_at, u.closed_at))
    return out


def _unmanaged(session: Session, start: float, end: float,
               dry_run: bool) -> list[UnmanagedOrder]:
    """The orders of ours no target managed that were open at some time between ``start`` and
    ``end``."""
    return [UnmanagedOrder(int(o.server_id), o.market, o.currency, float(o.price),
                           float(o.created_at), o.closed_at)
            for o in session.scalars(select(BotOrder).where(
                BotOrder.target.is_(None), BotOrder.dry_run.is_(dry_run),
                BotOrder.created_at <= end,
                or_(BotOrder.closed_at.is_(None), BotOrder.closed_at > start)))]


Event = tuple[float, str, float | None, dict[str, Any] | None]
"""(at, kind, price, detail) of a ``BotOrderEvent``"""


def _events(session: Session, order_ids: list[int]) -> dict[int, list[Event]]:
    """The events of ``order_ids`` in the order they happened, by order."""
    out: dict[int, list[Event]] = {}
    for ref, at, kind, price, detail in session.execute(
            select(BotOrderEvent.order_ref, BotOrderEvent.at, BotOrderEvent.kind,
                   BotOrderEvent.price, BotOrderEvent.detail)
            .where(BotOrderEvent.order_ref.in_(order_ids)).order_by(BotOrderEvent.id)):
        out.setdefault(ref, []).append((at, kind, price, detail))
    return out


def _cycles(session: Session, run_id: int) -> list[RecordedCycle]:
    rows = session.execute(
        select(BotCycle.id, BotCycle.at, BotCycle.gigaspot_frame_time, BotCycle.spot_frame_time)
        .where(BotCycle.run_id == run_id, BotCycle.skipped.is_(None)).order_by(BotCycle.id)).all()
    actions: dict[int, list[ActionKey]] = {}
    for cycle_id, recorded in session.execute(
            select(BotDecision.cycle_id, BotDecision.actions)
            .join(BotCycle, BotCycle.id == BotDecision.cycle_id)
            .where(BotCycle.run_id == run_id)):
        actions.setdefault(cycle_id, []).extend(_key(a) for a in recorded)
    out = []
    for cycle_id, at, giga, spot in rows:
        frames = [t for t in (giga, spot) if t is not None] or [at]
        out.append(RecordedCycle(at, max(frames), min(frames),
                                 tuple(sorted(actions.get(cycle_id, ())))))
    return out


def _key(action: dict[str, Any]) -> ActionKey:
    return (str(action["target"]), str(action["kind"]), int(action["server_id"]),
            float(action.get("price", 0.0)))


def _last_sync(session: Session, since: float, until: float | None) -> float | None:
    """When ``my_orders`` last answered between ``since`` and ``until`` (the next run's start):
    the run's spends are as of then."""
    query = select(ApiCall.started_at).where(
        ApiCall.endpoint == "my_orders", ApiCall.outcome == "ok", ApiCall.started_at >= since)
    if until is not None:
        query = query.where(ApiCall.started_at < until)
    return session.scalar(query.order_by(ApiCall.started_at.desc()).limit(1))


def _starting(order: BotOrder, events: list[Event], start: float) -> StartingOrder:
    """``order`` as it stood when the run started (its row holds its state now): the price,
    last lowering and step knowledge its ``events`` give up to ``start`` (events at ``start``
    are the run's own: a restart takes time, so the run before wrote its last ones earlier)."""
    assert order.target is not None
    price, lowered_at, knowledge = order.price, None, None
    for at, kind, event_price, detail in events:
        if at >= start:
            break
        if kind in ("created", "confirmed", "raised", "lowered", "adopted") \
                and event_price is not None:
            price = event_price
        if kind == "lowered":
            lowered_at = at
        if kind == "step_learned" and detail and event_price is not None:
            knowledge = StepKnowledge(event_price, float(detail["max_step"]))
    return StartingOrder(order.target, order.server_id, price,
                         order.confirmed_at or order.created_at, order.order_id, lowered_at,
                         knowledge)


def _virtual_bill(order: BotOrder, events: list[Event], end: float) -> float:
    """What a dry-run order would have paid: its price over the time its virtual fill held.

    A virtual fill is judged once a cycle; each judgement holds until the next, and the first
    one from the order's creation on (the exchange would have judged it at once)."""
    total, held_since, price, judged = 0.0, None, order.price, False
    for at, kind, new_price, _ in [*events, (end, "end", None, None)]:
        at = min(at, end)
        if kind == "won" and held_since is None:
            held_since = at if judged else min(order.created_at, at)
        if held_since is not None:
            total += price * (at - held_since) / DAY
            held_since = None if kind in ("outbid", "closed", "end") else at
        judged |= kind in ("won", "outbid")
        if new_price is not None:
            price = new_price
    return total


# --- replaying it -------------------------------------------------------------------------------


def replay_diff(session: Session, run: RecordedRun, settings: RunSettings) -> ReplayDiff:
    """Replay ``run`` on the market recorded in ``session`` and compare."""
    config = run.config
    first_seen = min(c.data_from for c in run.cycles)
    extra: dict[str, list[int]] = {}
    for order in run.starting:
        market = next(t.market for t in config.targets if t.name == order.target)
        extra.setdefault(market, []).append(order.server_id)
    # a cycle after the run's last sync (its end, for the bill) still saw newer market data: the
    # replay needs it too, or that cycle is replayed on older data than the bot decided on
    last_seen = max(run.end, max(c.seen_at for c in run.cycles))
    try:
        history = load_history(session, config.targets, allocation=config.markets.gigaspot.allocation,
                               start=first_seen, end=last_seen,
                               grid_interval=config.bot.decide_interval,
                               extra_servers=extra,
                               extra_times=[c.seen_at for c in run.cycles])
    except HistoryError as err:
        raise ReplayDiffError(f"run {run.run_id}: {err}") from None
    earliest = min(c.seen_at for c in run.cycles)
    if history.n_ticks and earliest < float(history.time[0]):
        # the market the run saw is gone (``bidder db prune``): a replay on what is left would
        # compare decisions made on data it cannot see
        raise ReplayDiffError(
            f"run {run.run_id}: its first decision saw the market at {fmt_utc(earliest)}, but "
            f"the recording now starts at {fmt_utc(float(history.time[0]))} (pruned?): the "
            "market it decided on is no longer recorded")
    # the run's engine warmed its market memory from what was recorded before its start: so does
    # its replay (bidder.warmup)
    warmed = warm_memories(session, config, [t for t in config.targets if getattr(
        AS_CONFIGURED.instance(t), "uses_memory", False)], until=run.started_at)
    if run.mode == "dry-run":
        # a dry run's virtual exchange takes whatever the rules engine sends: it neither
        # refuses a step nor enforces a cooldown (the engine's own beliefs still apply)
        settings = replace(settings, exchange=replace(settings.exchange,
                                                      step_rule="fraction:1", cooldown=0.0))
    record = run_variant(history, config, AS_CONFIGURED, settings, "replay",
                         decision_times=[c.at for c in run.cycles],
                         seen_at=[c.seen_at for c in run.cycles], end=run.end,
                         starting_orders=run.starting, keep_trace=True,
                         started_at=run.started_at, memories=warmed.memories,
                         left_before=run.left_before, unusable_before=run.unusable_before,
                         kept_away=run.kept_away, not_taken=run.not_taken,
                         call_times=run.call_times, unmanaged=run.unmanaged)
    assert record.trace is not None
    out = ReplayDiff(run)
    for cycle, (_, the_plan) in zip(run.cycles, record.trace):
        mine = _plan_keys(the_plan)
        if not _same(cycle.actions, mine):
            out.differences.append(CycleDiff(cycle.at, cycle.actions, mine))
    carried = {o.target for o in run.starting}
    for target in config.targets:
        why_not = "carried" if target.name in carried else \
            "outlived" if target.name in run.outlived else None
        out.costs.append(CostDiff(target.name, target.currency, run.billed[target.name],
                                  _cost_until(record, target.name, run.started_at, run.end),
                                  why_not is None, why_not))
    return out


def _plan_keys(the_plan: Plan) -> tuple[ActionKey, ...]:
    return tuple(sorted(_key(action_json(a)) for a in the_plan.actions))


def _same(a: Sequence[ActionKey], b: Sequence[ActionKey]) -> bool:
    """Both sorted: the same actions, prices within ``PRICE_TOLERANCE``."""
    return len(a) == len(b) and all(x[:3] == y[:3] and math.isclose(x[3], y[3], rel_tol=PRICE_TOLERANCE)
               for x, y in zip(a, b))


def _cost_until(record: RunRecord, target: str, start: float, end: float) -> float:
    """What the replay's fill model charged ``target`` between ``start`` and ``end`` (no fees)."""
    t = record.step_time
    lo = np.clip(t, start, end)
    hi = np.clip(t + record.step_dt, start, end)
    return float(np.sum(record.targets[target].paid_per_day * (hi - lo)) / DAY)


# --- showing it ---------------------------------------------------------------------------------


def describe(diff: ReplayDiff, when: Any) -> str:
    """The report for people; ``when(t)`` formats a time."""
    run = diff.run
    lines = [f"run {run.run_id} ({run.mode}): {diff.cycles} decided cycles from "
             f"{when(run.cycles[0].at)} to {when(run.cycles[-1].at)} UTC; costs up to "
             f"{when(run.end)}"]
    if run.starting:
        lines.append(f"{len(run.starting)} order(s) were open when the run started: replayed, but "
                     "left out of the costs (their spend before the start is unknown)")
    if run.outlived:
        lines.append(f"target(s) {', '.join(sorted(run.outlived))} left orders open into the next "
                     "run without recording their spend at the stop (the bot did not stop "
                     "cleanly): their bill holds the next run's spend, so it is not compared")
    n = len(diff.differences)
    lines.append(f"decisions: {n} of {diff.cycles} cycles differ"
                 + (" (later ones may follow from the first: from there the replay's orders are "
                    "not the bot's)" if n else ""))
    for d in diff.differences[:SHOWN_DIFFERENCES]:
        lines.append(f"  {when(d.at)}  bot:    {_actions_text(d.bot)}")
        lines.append(f"  {' ' * len(when(d.at))}  replay: {_actions_text(d.replay)}")
    if n > SHOWN_DIFFERENCES:
        lines.append(f"  ... and {n - SHOWN_DIFFERENCES} more (--json has them all)")
    lines.append(f"{'target':<16} {'bot paid':>12} {'replay paid':>12} {'gap':>8}  currency")
    for c in diff.costs:
        gap = "n/a" if math.isnan(c.gap) else f"{c.gap:+.2%}"
        gap = gap if c.comparable else c.why_not or "n/a"
        lines.append(f"{c.target:<16} {c.bot:>12.4f} {c.replay:>12.4f} {gap:>8}  {c.currency}")
    return "\n".join(lines)


def _actions_text(actions: Sequence[ActionKey]) -> str:
    if not actions:
        return "nothing"
    return ", ".join(f"{target}: {kind} {server}" + ("" if kind == "cancel" else f" @ {price:.6g}")
                     for target, kind, server, price in actions)


def as_json(diff: ReplayDiff) -> dict[str, Any]:
    run = diff.run
    return {
        "run": run.run_id, "mode": run.mode, "cycles": diff.cycles,
        "from": run.cycles[0].at, "to": run.cycles[-1].at, "costs_until": run.end,
        "starting_orders": len(run.starting),
        "differences": [{"at": d.at, "bot": [list(k) for k in d.bot],
                         "replay": [list(k) for k in d.replay]} for d in diff.differences],
        "costs": [{"target": c.target, "currency": c.currency, "bot": c.bot, "replay": c.replay,
                   "comparable": c.comparable, "why_not_comparable": c.why_not,
                   "gap": None if math.isnan(c.gap) else c.gap} for c in diff.costs],
    }

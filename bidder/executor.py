"""The executor: carries out the rules engine's plan at the exchange, write-ahead and reconciled.

Actions go in plan order: cancels (one ``cancel_orders`` call), lowerings, raises (spot: one
``set_spot_price`` each; GigaSPOT: one ``edit_gigaspot_orders`` batch each), creates (GigaSPOT:
one ``create_gigaspot_orders`` batch; spot: one ``create_order`` each). Every call is journaled
before it is sent, in the same transaction as the order rows it concerns, and its outcome is
written after together with what it changed. Then:

- a create answers no id: the order stays ``pending`` and a reconciliation (``my_orders``) right
  after the creates finds it by server and creation time;
- an outcome that is unknown makes the order ``unknown``: nothing touches it until a
  reconciliation has settled it; nothing is ever retried blindly;
- ``exceeded_max_step`` teaches the order's step (``StepKnowledge``) and the lowering is retried
  once at the lowest price allowed; ``can_lower_every_600_seconds`` stores when lowering is
  allowed again; a GigaSPOT lowering refused without a reason halves the step it tries next;
- GigaSPOT batch replies count per item: a refused OC is never sent to that machine again, a failed
  rent keeps away from the machine for a while, a too-low bid waits for fresher market data;
- when the daily budget is limited and a cancel or lowering did not free what the plan counted on,
  raises and creates wait for the next cycle, so the budget is never exceeded.

In a dry run the same path runs against the journal only: calls are recorded ``dry_run`` and not
sent, and orders are virtual (negative ids) whose winning or losing the engine reads off the market.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bidder.api import CloreClient, CloreError, ExceededMaxStep, FieldError, LoweringTooSoon
from bidder.api.client import CANCEL_BATCH
from bidder.api.models import (
    GigaspotEditRequest,
    GigaspotOrderRequest,
    OcSetting,
    SpotOrderRequest,
    dump_body,
)
from bidder.clock import Clock
from bidder.config import Config, TargetConfig
from bidder.journal import Journal, Sent
from bidder.lowering import probed_step
from bidder.orders import OPEN_STATES, add_event, close, describe_price, keep_away, own_order
from bidder.reconcile import CreateGrace, Reconciler, ReconcileReport
from bidder.rules import Cancel, ChangePrice, Create, Plan
from storage.models import FACTS, BotOrder
from strategies.base import TargetView

log = logging.getLogger(__name__)



@dataclass(slots=True)
class CancelResult:
    cancelled: list[int] = field(default_factory=list)
    not_cancelled: list[int] = field(default_factory=list)
    """Refused, unknown or not sent (see the order's events and the journal)."""


@dataclass(slots=True)
class Execution:
    """What one ``execute`` did."""

    calls: int = 0
    cancelled: int = 0
    lowered: int = 0
    raised: int = 0
    created: int = 0
    refused: int = 0
    unknown: int = 0
    held_back: int = 0
    """Raises and creates not sent because a release did not go as planned (limited budget)."""


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def spot_request(target: TargetConfig, server_id: int, price: float) -> SpotOrderRequest:
    return SpotOrderRequest(
        currency=target.currency, image=target.image, renting_server=server_id, spotprice=price,
        ports=dict(target.ports) or None, env=dict(target.env) or None,
        jupyter_token=secret(target.jupyter_token), ssh_key=secret(target.ssh_key),
        ssh_password=secret(target.ssh_password), command=target.command)


def oc_problem(oc: OcSetting, gpus: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``oc`` does not fit every GPU of a machine (its ranges from the snapshot); None if it
    fits. A setting the machine gives no range for does not fit: we cannot know it is accepted."""
    for index, gpu in enumerate(gpus):
        for name, value in oc.model_dump(exclude_none=True).items():
            bounds = gpu.get(name)
            if bounds is None:
                return f"GPU {index} lists no {name} range"
            low, high = bounds
            if not low <= value <= high:
                return f"{name} {value} is outside GPU {index}'s range [{low}, {high}]"
    return None


def create_target(order: BotOrder) -> str:
    """The target of an order the bot created (only adopted orders may have none)."""
    assert order.target is not None, order.id
    return order.target


def _clock_time(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


class Executor:
    """Carries out plans; see the module documentation."""

    def __init__(self, client: CloreClient, sessions: sessionmaker[Session], clock: Clock,
                 config: Config, *, journal: Journal, stop: threading.Event | None = None,
                 halted: Callable[[], bool] = lambda: False) -> None:
        self._client = client
        self._sessions = sessions
        self._clock = clock
        self._config = config
        self._targets = {t.name: t for t in config.targets}
        self.journal = journal
        self._stop = stop if stop is not None else threading.Event()
        self._halted = halted
        self.dry_run = journal.dry_run
        self.reconciler = Reconciler(client, sessions, clock, config.targets,
                                     slack=config.bot.create_slack,
                                     grace=CreateGrace(config.bot.create_grace_seconds,
                                                       config.bot.create_grace,
                                                       config.bot.create_grace_max),
                                     ended_block=config.bot.failed_rent_block)
        self.last_reconcile = -math.inf
        """When the last reconciliation succeeded (``reconcile_soon`` forgets it)."""

    # --- reconciliation --------------------------------------------------------------------------

    def reconcile(self) -> ReconcileReport | None:
        """Reconcile the order book with the exchange (not in a dry run: virtual orders are never
        compared with ``my_orders``). Logs and returns None when the exchange cannot be asked."""
        if self.dry_run:
            return None
        try:
            report = self.reconciler.reconcile()
        except CloreError as err:
            log.error("reconciliation failed (%s); orders in flight wait for the next one", err)
            return None
        self.last_reconcile = self._clock.now()
        if report.found or report.closed or report.failed or report.adopted:
            log.info("reconciled with Clore: %d orders present, %d creates found, %d closed, "
                     "%d failed, %d adopted", report.present, report.found, report.closed,
                     report.failed, report.adopted)
        return report

    def reconcile_soon(self) -> None:
        """Make the next cycle reconcile, whatever the interval says."""
        self.last_reconcile = -math.inf

    # --- the plan --------------------------------------------------------------------------------

    def execute(self, plan: Plan, views: Mapping[str, TargetView]) -> Execution:
        """Carry out ``plan`` (``views``: the cycle's views by target, for server sizes)."""
        done = Execution()
        cancels = [a for a in plan.actions if isinstance(a, Cancel)]
        changes = [a for a in plan.actions if isinstance(a, ChangePrice)]
        creates = [a for a in plan.actions if isinstance(a, Create)]
        released = self._cancel(cancels, done) if cancels else True
        released &= self._reprice([c for c in changes if not c.is_raise], done)
        raises = [c for c in changes if c.is_raise]
        if (raises or creates) and not released and self._config.budget.max_per_day is not None:
            done.held_back = len(raises) + len(creates)
            log.warning("%d raises and creates wait for the next cycle: a cancel or lowering did "
                        "not free what the budget counted on", done.held_back)
        else:
            self._reprice(raises, done)
            self._create(creates, views, done)
        if done.created or done.unknown:
            self.reconcile()
        return done

    def _stopping(self) -> bool:
        return self._stop.is_set()

    # --- cancels ---------------------------------------------------------------------------------

    def _cancel(self, actions: Sequence[Cancel], done: Execution) -> bool:
        result = self.cancel([(a.order_id, a.server_id, a.reason.replace("_", " "))
                              for a in actions], done)
        return not result.not_cancelled

    def cancel(self, orders: Sequence[tuple[int, int, str]],
               done: Execution | None = None) -> CancelResult:
        """Cancel open orders of ours, given as (order id, server id, reason), in ``cancel_orders``
        batches of 64, each journaled. A refusal or unknown outcome makes the order ``unknown``
        (reconciliation tells whether it still lives)."""
        done = done if done is not None else Execution()
        result = CancelResult()
        for start in range(0, len(orders), CANCEL_BATCH):
            batch = orders[start:start + CANCEL_BATCH]
            if self._stopping():
                result.not_cancelled += [order_id for order_id, _, _ in batch]
                continue
            self._cancel_batch(batch, done, result)
        return result

    def _cancel_batch(self, batch: Sequence[tuple[int, int, str]], done: Execution,
                      result: CancelResult) -> None:
        ids = [order_id for order_id, _, _ in batch]
        with self._sessions.begin() as session:
            local = self._local_ids(session, ids)
            entry = self.journal.write(session, "cancel_orders", {"order_ids": ids},
                                       orders=[local[i] for i in ids],
                                       servers=[server_id for _, server_id, _ in batch])
        sent = self.journal.send(entry, lambda: self._client.cancel_orders(ids))
        done.calls += 1
        failed = set(sent.reply.failed_to_cancel) if sent.ok and sent.reply else set()
        with self._sessions.begin() as session:
            Journal.record(session, sent)
            for order_id, server_id, reason in batch:
                order = session.get_one(BotOrder, local[order_id])
                if sent.status in ("ok", "dry_run") and order_id not in failed:
                    close(session, order, sent.finished_at, f"cancelled ({reason})")
                    done.cancelled += 1
                    result.cancelled.append(order_id)
                    log.info("%scancelled %s order %d on server %d (%s)", self._tag, order.market,
                             order_id, server_id, reason)
                    continue
                result.not_cancelled.append(order_id)
                if sent.status in ("ok", "unknown"):
                    self._unknown(session, order, sent, done, "cancel")
                else:
                    self._refused(session, order, sent, done, "cancel")

    # --- price changes ---------------------------------------------------------------------------

    def _reprice(self, changes: Sequence[ChangePrice], done: Execution) -> bool:
        """Spot changes one by one, GigaSPOT changes in one batch; True if all went as planned."""
        as_planned = True
        giga = [c for c in changes if self._market(c.target) == "gigaspot"]
        if giga:
            as_planned &= self._edit_gigaspot(giga, done)
        for change in changes:
            if self._market(change.target) == "spot":
                as_planned &= self._set_spot_price(change, done)
        return as_planned

    def _set_spot_price(self, change: ChangePrice, done: Execution, *, retry: bool = True) -> bool:
        if self._stopping():
            return False
        with self._sessions.begin() as session:
            local_id = self._local_ids(session, [change.order_id])[change.order_id]
            entry = self.journal.write(
                session, "set_spot_price",
                {"order_id": change.order_id, "desired_price": change.price},
                orders=[local_id], servers=[change.server_id])
        sent = self.journal.send(
            entry, lambda: self._client.set_spot_price(change.order_id, change.price))
        done.calls += 1
        retry_at: float | None = None
        with self._sessions.begin() as session:
            Journal.record(session, sent)
            order = session.get_one(BotOrder, local_id)
            now = sent.finished_at
            error = sent.error
            if sent.status in ("ok", "dry_run"):
                self._priced(session, order, change.price, now, done)
                return True
            if isinstance(error, ExceededMaxStep):
                order.step_price, order.step_max = order.price, error.max_step
                add_event(session, order, "step_learned", now, order.price,
                          max_step=error.max_step, wanted=change.price)
                lowest = max(error.max_step, change.price)
                log.info("lowering %d on server %d to %.6g went too far; the lowest allowed is "
                         "%.6g", change.order_id, change.server_id, change.price, error.max_step)
                if retry and lowest < order.price:
                    retry_at = lowest
            elif isinstance(error, LoweringTooSoon):
                order.told_next_lower_at = now + error.time_to_lowering
                add_event(session, order, "cooldown_told", now, order.price,
                          time_to_lowering=error.time_to_lowering)
                log.warning("lowering %d on server %d refused: wait %.0f s (until %s)",
                            change.order_id, change.server_id, error.time_to_lowering,
                            _clock_time(order.told_next_lower_at))
            elif sent.status == "unknown" or isinstance(error, FieldError):
                self._unknown(session, order, sent, done, "price change")
            else:
                self._refused(session, order, sent, done, "price change")
        if retry_at is not None:
            self._set_spot_price(replace(change, price=retry_at), done, retry=False)
        return False

    def _edit_gigaspot(self, changes: Sequence[ChangePrice], done: Execution) -> bool:
        if self._stopping():
            return False
        edits = [GigaspotEditRequest(order_id=c.order_id, price=c.price) for c in changes]
        ids = [c.order_id for c in changes]
        with self._sessions.begin() as session:
            local = self._local_ids(session, ids)
            entry = self.journal.write(session, "edit_gigaspot_orders",
                                       [dump_body(e) for e in edits],
                                       orders=[local[i] for i in ids],
                                       servers=[c.server_id for c in changes])
        sent = self.journal.send(entry, lambda: self._client.edit_gigaspot_orders(edits))
        done.calls += 1
        reply = sent.reply if sent.ok else None
        all_done = True
        with self._sessions.begin() as session:
            Journal.record(session, sent)
            now = sent.finished_at
            for change in changes:
                order = session.get_one(BotOrder, local[change.order_id])
                if sent.status == "dry_run" or (reply and change.order_id
                                                in reply.success_to_update_ids):
                    self._priced(session, order, change.price, now, done)
                    continue
                all_done = False
                if reply and change.order_id in reply.too_low_bid_ids:
                    order.told_next_lower_at = now + self._config.bot.too_low_block
                    add_event(session, order, "too_low", now, order.price, wanted=change.price)
                    log.warning("GigaSPOT order %d on machine %d: %.6g is below the machine's "
                                "minimum bid", change.order_id, change.server_id, change.price)
                    done.refused += 1
                elif reply and change.order_id in reply.failed_to_update_ids \
                        and not change.is_raise:
                    self._probe_step(session, order, change, now)
                    self._unknown(session, order, sent, done, "lowering")
                elif sent.status in ("ok", "unknown"):
                    self._unknown(session, order, sent, done, "price change")
                else:
                    self._refused(session, order, sent, done, "price change")
        return all_done

    def _probe_step(self, session: Session, order: BotOrder, change: ChangePrice,
                    now: float) -> None:
        """A GigaSPOT lowering was refused without a reason: try half the step next time."""
        lowest = probed_step(order.price, change.price)
        if lowest is None:
            rules = self._config.markets.rules("gigaspot")
            order.told_next_lower_at = now + rules.cooldown
            add_event(session, order, "lowering_refused", now, order.price, wanted=change.price,
                      wait=rules.cooldown)
            return
        order.step_price, order.step_max = order.price, lowest
        add_event(session, order, "step_learned", now, order.price, max_step=order.step_max,
                  wanted=change.price, probed=True)

    def _priced(self, session: Session, order: BotOrder, price: float, now: float,
                done: Execution) -> None:
        old = order.price
        order.price = price
        if price < old:
            order.last_lowered_at = now
            done.lowered += 1
            add_event(session, order, "lowered", now, price, old_price=old)
            nxt = own_order(order, self._config.markets).next_lower_at
            log.info("%slowered %d on server %d to %s, next lowering at %s", self._tag,
                     order.order_id, order.server_id, describe_price(price, order.currency),
                     _clock_time(nxt))
        else:
            done.raised += 1
            add_event(session, order, "raised", now, price, old_price=old)
            why = f"outbid on {order.server_id}: " if order.market_state == "outbid" else ""
            log.info("%s%sraised %d on server %d to %s", self._tag, why, order.order_id,
                     order.server_id, describe_price(price, order.currency))

    # --- creates ---------------------------------------------------------------------------------

    def _create(self, creates: Sequence[Create], views: Mapping[str, TargetView],
                done: Execution) -> None:
        giga = [c for c in creates if self._market(c.target) == "gigaspot"]
        if giga:
            self._create_gigaspot(giga, views, done)
        for create in creates:
            if self._market(create.target) == "spot":
                if self._stopping() or self._halted():
                    return
                self._create_spot(create, views[create.target], done)

    def _create_spot(self, create: Create, view: TargetView, done: Execution) -> None:
        target = self._targets[create.target]
        request = spot_request(target, create.server_id, create.price)
        with self._sessions.begin() as session:
            if self._occupied(session, [create.server_id]):
                return
            order = self._new_order(session, create, view, oc=None)
            entry = self.journal.write(session, "create_order", dump_body(request),
                                       orders=[order.id], servers=[create.server_id])
            local_id = order.id
        sent = self.journal.send(entry, lambda: self._client.create_spot_order(request))
        done.calls += 1
        with self._sessions.begin() as session:
            Journal.record(session, sent)
            self._created(session, session.get_one(BotOrder, local_id), sent,
                          refused_because=str(sent.error) if sent.error else None, done=done)

    def _create_gigaspot(self, creates: Sequence[Create], views: Mapping[str, TargetView],
                         done: Execution) -> None:
        if self._stopping() or self._halted():
            return
        with self._sessions.begin() as session:
            taken = self._occupied(session, [c.server_id for c in creates])
            ready: list[tuple[Create, GigaspotOrderRequest]] = []
            for create in creates:
                if create.server_id in taken:
                    continue
                request = self._gigaspot_request(session, create)
                if request is not None:
                    ready.append((create, request))
            if not ready:
                return
            orders = [self._new_order(session, c, views[c.target], oc=r.oc) for c, r in ready]
            entry = self.journal.write(session, "create_gigaspot_orders",
                                       [dump_body(r) for _, r in ready],
                                       orders=[o.id for o in orders],
                                       servers=[c.server_id for c, _ in ready])
            local_ids = [o.id for o in orders]
        requests = [r for _, r in ready]
        sent = self.journal.send(entry, lambda: self._client.create_gigaspot_orders(requests))
        done.calls += 1
        reply = sent.reply if sent.ok else None
        with self._sessions.begin() as session:
            Journal.record(session, sent)
            now = sent.finished_at
            for local_id in local_ids:
                order = session.get_one(BotOrder, local_id)
                sid = order.server_id
                if reply is None or sid not in (*reply.failed_to_oc_servers,
                                                *reply.failed_to_rent_servers,
                                                *reply.too_low_bids_servers):
                    self._created(session, order, sent, refused_because=str(sent.error)
                                  if sent.error else None, done=done)
                elif sid in reply.failed_to_oc_servers:
                    keep_away(session, sid, create_target(order), "failed_oc", None, now)
                    self._created(session, order, sent, "the machine refused our OC settings",
                                  done)
                elif sid in reply.failed_to_rent_servers:
                    keep_away(session, sid, create_target(order), "failed_rent",
                                now + self._config.bot.failed_rent_block, now)
                    self._created(session, order, sent, "the machine failed to rent", done)
                else:
                    keep_away(session, sid, create_target(order), "too_low",
                                now + self._config.bot.too_low_block, now)
                    self._created(session, order, sent, "the bid is below the machine's minimum",
                                  done)

    def _gigaspot_request(self, session: Session, create: Create) -> GigaspotOrderRequest | None:
        """The create's request with one OC setting per GPU, or None (and a block) when our OC
        does not fit the machine's ranges."""
        target = self._targets[create.target]
        assert target.oc is not None  # the config requires it for GigaSPOT targets
        gpus = session.scalar(select(FACTS.c.gpus).where(FACTS.c.machine_id == create.server_id,
                                                         FACTS.c.end_snapshot.is_(None)))
        problem = "the machine is not in the recorded snapshots" if gpus is None \
            else oc_problem(target.oc, gpus)
        if problem is not None:
            log.warning("not bidding on GigaSPOT machine %d for %r: %s", create.server_id,
                        target.name, problem)
            keep_away(session, create.server_id, target.name, "oc_out_of_range", None,
                        self._clock.now())
            return None
        return GigaspotOrderRequest(currency=target.currency, image=target.image,
                                    renting_server=create.server_id, price=create.price,
                                    oc=[target.oc] * len(gpus), env=dict(target.env) or None)

    def _new_order(self, session: Session, create: Create, view: TargetView,
                   oc: Sequence[OcSetting] | None) -> BotOrder:
        """The order row, ``creating``, written with the create's journal entry."""
        row = view.candidates.row(create.server_id)
        gpus = int(view.candidates.gpus[row]) if row is not None else 1
        now = self._clock.now()
        target = self._targets[create.target]
        order = BotOrder(target=create.target, market=target.market, server_id=create.server_id,
                         order_id=None, state="creating", price=create.price,
                         currency=target.currency, gpus=gpus,
                         oc=[dump_body(o) for o in oc] if oc is not None else None, sent_at=now,
                         created_at=now, adopted=False, dry_run=self.dry_run, lookups=0)
        session.add(order)
        session.flush()
        add_event(session, order, "sending", now, create.price)
        return order

    def _created(self, session: Session, order: BotOrder, sent: Sent[Any],
                 refused_because: str | None, done: Execution) -> None:
        """Record how a create ended. Its cooldown counts from the reply (no earlier than the
        exchange's own creation time)."""
        now = sent.finished_at
        order.created_at = now
        what = f"{order.market} order on server {order.server_id} at " \
               f"{describe_price(order.price, order.currency)}"
        if sent.status == "dry_run":
            order.state, order.order_id, order.confirmed_at = "live", -order.id, now
            add_event(session, order, "created", now, order.price, order_id=order.order_id)
            done.created += 1
            log.info("[dry run] created %s (virtual order %d)", what, order.order_id)
        elif sent.status == "ok" and refused_because is None:
            order.state = "pending"
            add_event(session, order, "created", now, order.price)
            done.created += 1
            log.info("created %s; looking up its id", what)
        elif sent.status == "unknown":
            self._unknown(session, order, sent, done, "create")
        else:
            done.refused += 1
            reason = refused_because or f"not sent: {sent.error}"
            if isinstance(sent.error, FieldError):
                keep_away(session, order.server_id, create_target(order), "refused",
                            now + self._config.bot.too_low_block, now)
            log.warning("create of %s failed: %s", what, reason)
            close(session, order, now, reason, state="failed")

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def _tag(self) -> str:
        return "[dry run] " if self.dry_run else ""

    def _market(self, target: str) -> str:
        return self._targets[target].market

    def _local_ids(self, session: Session, order_ids: Sequence[int]) -> dict[int, int]:
        """Exchange id -> local id of the open orders a plan names (raises before anything is
        journaled if one is no longer open: another process, ``cancel-all``, closed it)."""
        found = {int(order_id): local_id for local_id, order_id in session.execute(
            select(BotOrder.id, BotOrder.order_id).where(BotOrder.order_id.in_(order_ids),
                                                         BotOrder.state.in_(OPEN_STATES),
                                                         BotOrder.dry_run.is_(self.dry_run)))}
        missing = [i for i in order_ids if i not in found]
        if missing:
            raise ValueError(f"the plan names orders the order book does not hold open: {missing}")
        return found

    def _occupied(self, session: Session, server_ids: Sequence[int]) -> set[int]:
        """Servers among ``server_ids`` where an order of ours is open (the rules engine already
        refuses them; this is the executor's own check before any create)."""
        taken = set(session.scalars(select(BotOrder.server_id).where(
            BotOrder.server_id.in_(server_ids), BotOrder.state.in_(OPEN_STATES),
            BotOrder.dry_run.is_(self.dry_run))))
        for server_id in sorted(taken):
            log.warning("not creating on server %d: an order of ours is open there", server_id)
        return taken

    def _unknown(self, session: Session, order: BotOrder, sent: Sent[Any], done: Execution,
                 what: str) -> None:
        order.state = "unknown"
        done.unknown += 1
        add_event(session, order, "outcome_unknown", sent.finished_at, order.price, call=what,
                  error=str(sent.error) if sent.error else None)
        log.warning("%s of %s order %s on server %d: outcome unknown (%s); reconciling before "
                    "anything else touches it", what, order.market, order.order_id,
                    order.server_id, sent.error or "not confirmed")

    def _refused(self, session: Session, order: BotOrder, sent: Sent[Any], done: Execution,
                 what: str) -> None:
        done.refused += 1
        add_event(session, order, "refused", sent.finished_at, order.price, call=what,
                  error=str(sent.error) if sent.error else None)
        log.error("%s of %s order %s on server %d failed: %s", what, order.market,
                  order.order_id, order.server_id, sent.error)

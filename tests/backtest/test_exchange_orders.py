"""Our orders on the emulated exchange, as the bot sees them: the same ``OwnOrder`` a live order
with the same history gives (``bidder.orders.own_order``)."""

from __future__ import annotations

import pytest

from bidder.backtest.exchange import EmulatedExchange, EmulatedOrder, ExchangeRules, StartingOrder
from bidder.config import MarketsConfig
from bidder.orders import own_order
from bidder.rules import ChangePrice, Create, Plan
from storage.models import BotOrder
from strategies.base import OwnOrder

FLOOR = 1.0


def exchange(rules: ExchangeRules | None = None, **spot: object) -> EmulatedExchange:
    """One spot target ``t`` on servers whose floor is ``FLOOR``; ``spot``: the bot's beliefs."""
    return EmulatedExchange(rules or ExchangeRules(call_latency=0.0), MarketsConfig(spot=spot),
                            [("t", "spot", "USD-Blockchain")],
                            lambda market, server, currency: (server, 1, FLOOR))


def send(ex: EmulatedExchange, now: float, *actions: object) -> None:
    ex.apply(Plan(actions=tuple(actions), deferred=()), now, tick=0)  # type: ignore[arg-type]


def the_order(ex: EmulatedExchange) -> EmulatedOrder:
    (order,) = ex.orders.values()
    return order


def live_view(o: EmulatedOrder, markets: MarketsConfig) -> OwnOrder:
    """What the live bot's database row of an order with ``o``'s history gives the strategy."""
    row = BotOrder(target=o.target, market=o.market, server_id=o.server_id, order_id=o.order_id,
                   state="live", price=o.price, gpus=o.gpus, created_at=o.created_at,
                   last_lowered_at=o.bot_lowered_at,
                   told_next_lower_at=o.not_before or None,
                   step_price=None if o.knowledge is None else o.knowledge.price,
                   step_max=None if o.knowledge is None else o.knowledge.max_step)
    return own_order(row, markets, state="winning" if o.winning else "outbid")


def assert_books_agree(ex: EmulatedExchange) -> None:
    """The order-flow invariant on the emulated exchange: what the bot sees (``own_orders``, cached)
    is what a live bot's rows of these orders would give, every order of ours is on its own
    server, and no price is under the floor."""
    for target in ex._targets:
        mine = [o for o in ex.orders.values() if o.target == target]
        assert ex.own_orders(target) == [live_view(o, ex.markets) for o in mine]
        servers = [o.server_id for o in mine]
        assert len(servers) == len(set(servers)), f"two orders of {target} on one server"
        assert all(o.price >= FLOOR for o in mine)


def test_a_new_order_shows_the_cooldown_and_step_a_live_one_shows():
    ex = exchange(initial_step_fraction=0.1)
    send(ex, 0.0, Create("t", 5, 100.0))
    (seen,) = ex.own_orders("t")
    # live: creation counts as a lowering (600 s), and one lowering reaches at most 10 % down
    assert seen.next_lower_at == pytest.approx(600.0)
    assert seen.lowest_allowed == pytest.approx(90.0)
    assert_books_agree(ex)



def test_the_view_follows_the_bot_beliefs_through_a_refusal_and_a_step():
    ex = exchange(ExchangeRules(cooldown=900.0, call_latency=0.0), cooldown=300.0, cooldown_from_creation=False)
    send(ex, 0.0, Create("t", 5, 100.0))
    assert ex.own_orders("t")[0].next_lower_at == 0.0  # the bot believes it may lower at once
    assert_books_agree(ex)
    oid = the_order(ex).order_id
    send(ex, 60.0, ChangePrice("t", oid, 5, 100.0, 95.0))  # the exchange says: wait 840 s
    assert ex.own_orders("t")[0].next_lower_at == pytest.approx(900.0)
    assert_books_agree(ex)
    send(ex, 900.0, ChangePrice("t", oid, 5, 100.0, 50.0))  # 10 % step: refused, retried at 90
    (seen,) = ex.own_orders("t")
    assert seen.price == pytest.approx(90.0)
    assert seen.next_lower_at == pytest.approx(900.0 + 300.0)  # the bot's own cooldown
    assert seen.lowest_allowed == pytest.approx(81.0)  # the learned step, as live applies it
    assert_books_agree(ex)


def test_a_step_refusal_with_nothing_to_retry_reaches_the_bot():
    ex = exchange()
    send(ex, 0.0, Create("t", 5, FLOOR))
    assert ex.own_orders("t")[0].lowest_allowed == 0.0  # initial_step_fraction 1.0: probe
    oid = the_order(ex).order_id
    send(ex, 600.0, ChangePrice("t", oid, 5, FLOOR, 0.95 * FLOOR))  # the floor refuses it
    assert ex.counters("t").step_refusals == 1 and the_order(ex).price == FLOOR
    assert ex.own_orders("t")[0].lowest_allowed == pytest.approx(FLOOR)
    assert_books_agree(ex)


@pytest.mark.parametrize("created_before, ended_after, fee", [
    (7200.0, 60.0, 0.0),  # paid before the run
    (7200.0, 0.0, 0.0),  # the run ends at once
    (300.0, 400.0, 0.5),  # lived past 600 s during the run: the run kept it, the run pays
    (300.0, 200.0, 0.0),  # cancelled within 600 s of its creation
])
def test_a_starting_order_pays_its_creation_fee_only_when_it_falls_due_in_the_run(
        created_before, ended_after, fee):
    ex = exchange(creation_fee=0.5)
    start = 10_000.0
    ex.add_starting(StartingOrder("t", 5, 3.0, created_at=start - created_before, order_id=7),
                    birth=0, start=start)
    assert_books_agree(ex)
    ex.end_all(start + ended_after)
    assert ex.counters("t").creation_fees == fee
    assert ex.counters("t").creation_fee_orders == (fee > 0)
    assert ex.orders == {}
    assert_books_agree(ex)

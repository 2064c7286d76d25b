"""Billing: what a holder pays per second, fees, wallets, and who is not billed."""

from __future__ import annotations

import pytest

from bidder.sim.world import BITCOIN, CLORE
from sim_helpers import Trader, public_server, quiet_market, rentable_machine

HOUR = 3600.0


def wallet(trader: Trader, currency: str) -> float:
    return next(w["balance"] for w in trader.get("wallets")["wallets"] if w["name"] == currency)


def spend_of(trader: Trader, order_id: int) -> dict:
    return next(o for o in trader.my_orders(completed=True) if o["id"] == order_id)


def test_pay_your_bid_spend_fees_and_wallet(quiet, trader, clock):
    server = public_server(quiet)
    start = wallet(trader, CLORE)
    offer = trader.spot_offer(server.id, server.floors[CLORE] * 1.5)
    created = quiet.order(offer["offer_id"]).created
    clock.set(created + 600)
    early = spend_of(trader, offer["offer_id"])
    assert early["creation_fee"] == 0  # not charged unless the order lives past 10 minutes
    assert early["spend"] == pytest.approx(offer["bid"] * 600 / 86400)
    clock.set(created + HOUR)
    order = spend_of(trader, offer["offer_id"])
    assert order["spend"] == pytest.approx(offer["bid"] / 24)
    assert order["creation_fee"] == 0.045 and order["fee"] == 2.5
    assert wallet(trader, CLORE) == pytest.approx(start - order["spend"] * 1.025 - 0.045)


def test_an_order_cancelled_within_10_minutes_pays_no_creation_fee(quiet, trader, clock):
    server = public_server(quiet)
    start = wallet(trader, CLORE)
    offer = trader.spot_offer(server.id, server.floors[CLORE] * 1.5)
    clock.set(quiet.order(offer["offer_id"]).created + 300)
    trader.post("cancel_order", {"id": offer["offer_id"]})
    clock.advance(HOUR)
    order = spend_of(trader, offer["offer_id"])
    assert order["creation_fee"] == 0
    assert order["spend"] == pytest.approx(offer["bid"] * 300 / 86400)
    assert wallet(trader, CLORE) == pytest.approx(start - order["spend"] * 1.025)


def test_outbid_orders_are_not_billed_and_the_holder_is(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, server.floors[CLORE] * 1.2)
    created = quiet.order(offer["offer_id"]).created
    clock.set(created + HOUR)
    rival = quiet.place_rival(server.id, offer["bid"] * 2)
    clock.set(created + 3 * HOUR)
    assert spend_of(trader, offer["offer_id"])["spend"] == pytest.approx(offer["bid"] / 24)
    assert quiet.order(rival.id).spend == pytest.approx(rival.price * 2 / 24)


def test_offline_servers_bill_nobody(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, server.floors[CLORE] * 1.2)
    created = quiet.order(offer["offer_id"]).created
    clock.set(created + HOUR)
    quiet.set_online(server.id, False)
    clock.set(created + 5 * HOUR)
    quiet.set_online(server.id, True)
    clock.set(created + 6 * HOUR)
    assert spend_of(trader, offer["offer_id"])["spend"] == pytest.approx(offer["bid"] * 2 / 24)


def test_second_price_pays_the_runner_up_or_the_floor(clock):
    market, trader = quiet_market(clock, payment="second_price")
    server = public_server(market)
    floor = server.floors[CLORE]
    offer = trader.spot_offer(server.id, floor * 2)
    created = market.order(offer["offer_id"]).created
    clock.set(created + HOUR)
    market.place_rival(server.id, floor * 1.5)
    clock.set(created + 2 * HOUR)
    spend = spend_of(trader, offer["offer_id"])["spend"]
    assert spend == pytest.approx(floor / 24 + floor * 1.5 / 24)  # the floor, then the runner-up


def test_second_price_on_gigaspot_under_host_profit(clock):
    market, trader = quiet_market(clock, payment="second_price")
    machine = rentable_machine(market)
    pl = machine.gpu_ranges[0]["pl"][0]
    trader.gigaspot_bid(machine, machine.min_bid * 3, pl=pl)
    market.place_rival(machine.id, machine.min_bid * 2, pl=pl)  # same power: scores differ by price
    [order] = trader.my_orders()
    clock.set(order["ct"] + 86400)
    assert spend_of(trader, order["id"])["spend"] == pytest.approx(machine.min_bid * 2, rel=1e-6)


def test_gigaspot_orders_are_billed_in_clore(quiet, trader, clock):
    machine = rentable_machine(quiet)
    start = wallet(trader, CLORE)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    [order] = trader.my_orders()
    clock.set(order["ct"] + 12 * HOUR)
    spend = spend_of(trader, order["id"])["spend"]
    assert spend == pytest.approx(machine.min_bid * 2 / 2, rel=1e-4)
    assert wallet(trader, CLORE) == pytest.approx(start - spend * 1.025 - 0.045)


def test_orders_in_bitcoin_charge_the_bitcoin_wallet(quiet, trader, clock):
    server = public_server(quiet)
    clore_before, btc_before = wallet(trader, CLORE), wallet(trader, BITCOIN)
    offer = trader.spot_offer(server.id, server.floors[BITCOIN] * 2, currency=BITCOIN)
    clock.set(quiet.order(offer["offer_id"]).created + HOUR)
    order = spend_of(trader, offer["offer_id"])
    assert order["currency"] == BITCOIN and order["creation_fee"] > 0
    charged = order["spend"] * 1.025 + order["creation_fee"]
    assert wallet(trader, BITCOIN) == pytest.approx(btc_before - charged)
    assert wallet(trader, CLORE) == clore_before

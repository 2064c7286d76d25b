"""The spot market: offers, who runs, the price rules and their exact error replies."""

from __future__ import annotations

import math

import pytest

from bidder.sim import SimMarket, SimOptions
from bidder.sim.world import BITCOIN, CLORE, USD
from sim_helpers import Trader, public_server, quiet_market, spot_order


def floor_of(market: SimMarket, server_id: int) -> float:
    return market.server(server_id).floors[CLORE]


def test_create_order_answers_only_code_0_and_the_offer_shows_up(quiet, trader, clock):
    server = public_server(quiet)
    price = floor_of(quiet, server.id) * 1.2
    assert trader.post("create_order", spot_order(server.id, price)) == {"code": 0}
    created = clock.now()
    offers = trader.offers(server.id)
    assert len(offers) == 1
    assert offers[0]["bid"] == price and offers[0]["my"] and offers[0]["active"]
    [order] = trader.my_orders()
    assert order["id"] == offers[0]["offer_id"]
    assert (order["si"], order["price"], order["currency"]) == (server.id, price, CLORE)
    assert order["ct"] == int(created)
    assert order["spot"] is True and order["expired"] is False
    assert order["mrl"] == server.mrl_hours * 3600


def test_a_price_under_the_floor_is_refused(quiet, trader):
    server = public_server(quiet)
    floor = floor_of(quiet, server.id)
    reply = trader.post("create_order", spot_order(server.id, floor * 0.99))
    assert reply == {"error": "price_too_low", "min_price": floor, "code": 6}
    assert trader.offers(server.id) == [] and trader.my_orders(completed=True) == []


def test_refusals_for_servers_that_cannot_take_the_order(quiet, trader):
    def error(server_id: int, currency: str = CLORE) -> str:
        return trader.post("create_order", spot_order(server_id, 10_000.0, currency))["error"]

    assert error(1) == "server_not_found"
    offline = public_server(quiet, 0)
    quiet.set_online(offline.id, False)
    assert error(offline.id) == "server_offline"
    no_usd = next(s for s in quiet.world.servers.values()
                  if USD not in s.floors and s.visibility == "public" and s.online)
    assert error(no_usd.id, USD) == "currency_not_accepted"


def test_private_servers_are_not_listed_and_refuse_orders(clock):
    market = SimMarket(SimOptions.quiet(spot_servers=60, gigaspot_machines=0), clock)
    private = next(s for s in market.world.servers.values() if s.visibility == "private")
    trader = Trader(market, clock)
    assert private.id not in {s["id"] for s in trader.get("marketplace")["servers"]}
    reply = trader.post("create_order", spot_order(private.id, 10_000.0))
    assert reply["error"] == "server_not_public"
    info = trader.get("spot_marketplace", market=private.id)["market"]["server"]
    assert info["visibility"] == "private"


def test_unknown_market_does_not_exist(trader):
    reply = trader.get("spot_marketplace", market=999_999)
    assert reply["exists"] is False and reply["code"] == 0


def test_a_user_may_hold_two_offers_on_one_server(quiet, trader):
    server = public_server(quiet)
    floor = floor_of(quiet, server.id)
    trader.spot_offer(server.id, floor * 1.1)
    trader.spot_offer(server.id, floor * 1.2)
    offers = trader.offers(server.id)
    assert [o["my"] for o in offers] == [True, True]
    assert [o["active"] for o in offers] == [False, True]


def test_highest_offer_runs_and_ties_go_to_the_earlier_offer(quiet, trader):
    server = public_server(quiet)
    price = floor_of(quiet, server.id) * 1.5
    rival = quiet.place_rival(server.id, price)
    ours = trader.spot_offer(server.id, price)
    assert not ours["active"] and quiet.holder(server.id) is rival
    assert trader.set_price(ours["offer_id"], price + 0.0001) == {"code": 0}
    assert quiet.holder(server.id).id == ours["offer_id"]
    active = {o["offer_id"]: o["active"] for o in trader.offers(server.id)}
    assert active == {rival.id: False, ours["offer_id"]: True}


def test_offers_in_other_currencies_compete_by_usd_value(quiet, trader):
    server = public_server(quiet)
    rival = quiet.place_rival(server.id, floor_of(quiet, server.id) * 2)
    rates = trader.get("spot_marketplace", market=server.id)["currency_rates_in_usd"]
    rival_usd = rival.price * rates[CLORE]
    below = round(rival_usd * 0.99 / rates[BITCOIN], 8)
    ours = trader.spot_offer(server.id, below, currency=BITCOIN)
    assert not ours["active"]
    trader.set_price(ours["offer_id"], round(rival_usd * 1.01 / rates[BITCOIN], 8))
    assert quiet.holder(server.id).id == ours["offer_id"]


def test_a_raise_is_accepted_at_once(quiet, trader):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 1.1)
    higher = offer["bid"] * 1.5
    assert trader.set_price(offer["offer_id"], higher) == {"code": 0}
    assert trader.offers(server.id)[0]["bid"] == higher


def test_lowering_too_soon_tells_the_time_left(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 2)
    created = quiet.order(offer["offer_id"]).created
    clock.set(created + 86.5)
    reply = trader.set_price(offer["offer_id"], offer["bid"] * 0.95)
    assert reply == {"error": "can_lower_every_600_seconds",
                     "time_to_lowering": math.ceil(600 - 86.5), "code": 6}


def test_lowering_too_far_tells_the_lowest_allowed_price_which_is_accepted(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 2)
    clock.set(quiet.order(offer["offer_id"]).created + 600)
    reply = trader.set_price(offer["offer_id"], offer["bid"] * 0.5)
    lowest = pytest.approx(offer["bid"] * 0.9, rel=1e-12)
    assert reply == {"error": "exceeded_max_step", "max_step": lowest, "code": 6}
    assert trader.set_price(offer["offer_id"], reply["max_step"]) == {"code": 0}
    again = trader.set_price(offer["offer_id"], reply["max_step"] * 0.95)
    assert again == {"error": "can_lower_every_600_seconds", "time_to_lowering": 599, "code": 6}


def test_the_cooldown_is_checked_before_the_step(quiet, trader):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 2)
    reply = trader.set_price(offer["offer_id"], offer["bid"] * 0.5)
    assert reply["error"] == "can_lower_every_600_seconds"


def test_absolute_step_rule(clock):
    market, trader = quiet_market(clock, step_rule="absolute:5")
    server = public_server(market)
    offer = trader.spot_offer(server.id, floor_of(market, server.id) + 50)
    clock.advance(600)
    reply = trader.set_price(offer["offer_id"], offer["bid"] - 6)
    assert reply == {"error": "exceeded_max_step", "max_step": pytest.approx(offer["bid"] - 5),
                     "code": 6}


def test_near_the_floor_max_step_is_the_floor_and_lowering_under_it_is_refused(clock):
    market, trader = quiet_market(clock, step_rule="fraction:0.5")
    server = public_server(market)
    floor = floor_of(market, server.id)
    offer = trader.spot_offer(server.id, floor * 1.5)
    clock.advance(600)
    too_far = trader.set_price(offer["offer_id"], floor * 0.5)
    assert too_far == {"error": "exceeded_max_step", "max_step": floor, "code": 6}
    under_floor = trader.set_price(offer["offer_id"], floor * 0.9)
    assert under_floor == {"error": "price_too_low", "min_price": floor, "code": 6}


def test_without_cooldown_from_creation_a_new_order_may_be_lowered_at_once(clock):
    market, trader = quiet_market(clock, cooldown_from_creation=False)
    server = public_server(market)
    offer = trader.spot_offer(server.id, floor_of(market, server.id) * 2)
    assert trader.set_price(offer["offer_id"], offer["bid"] * 0.9) == {"code": 0}


def test_orders_of_others_and_unknown_orders_are_not_found(quiet, trader):
    server = public_server(quiet)
    rival = quiet.place_rival(server.id, floor_of(quiet, server.id) * 2)
    not_found = {"error": "order_not_found", "code": 6}
    assert trader.set_price(rival.id, rival.price * 2) == not_found
    assert trader.set_price(12345, 1.0) == not_found
    assert trader.post("cancel_order", {"id": rival.id}) == not_found
    assert rival.open and rival.price == floor_of(quiet, server.id) * 2


def test_cancel_order_ends_it(quiet, trader):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 2)
    reply = trader.post("cancel_order", {"id": offer["offer_id"], "issue": "GPU #1 overheating"})
    assert reply == {"code": 0}
    assert trader.offers(server.id) == [] and trader.my_orders() == []
    [ended] = trader.my_orders(completed=True)
    assert ended["id"] == offer["offer_id"] and ended["expired"] is True
    assert trader.post("cancel_order", {"id": offer["offer_id"]})["error"] == "order_not_found"


def test_outbid_offers_wait_and_resume(quiet, trader):
    server = public_server(quiet)
    ours = trader.spot_offer(server.id, floor_of(quiet, server.id) * 1.2)
    rival = quiet.place_rival(server.id, ours["bid"] * 1.5)
    offers = {o["offer_id"]: o["active"] for o in trader.offers(server.id)}
    assert offers == {ours["offer_id"]: False, rival.id: True}
    assert trader.my_orders()[0]["expired"] is False
    quiet.cancel(rival.id)
    assert trader.offers(server.id)[0]["active"] is True


def test_outbid_offers_terminate_under_that_policy(clock):
    market, trader = quiet_market(clock, outbid_policy="terminate")
    server = public_server(market)
    ours = trader.spot_offer(server.id, floor_of(market, server.id) * 1.2)
    rival = market.place_rival(server.id, ours["bid"] * 1.5)
    assert [o["offer_id"] for o in trader.offers(server.id)] == [rival.id]
    assert trader.my_orders() == []
    assert trader.my_orders(completed=True)[0]["expired"] is True


def test_no_offer_runs_on_an_offline_or_rented_server(quiet, trader):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 1.2)
    quiet.set_online(server.id, False)
    reply = trader.get("spot_marketplace", market=server.id)["market"]
    assert reply["server"]["online"] is False and reply["offers"][0]["active"] is False
    assert server.id not in {s["id"] for s in trader.get("marketplace")["servers"]}
    quiet.set_online(server.id, True)
    quiet.set_rented(server.id, True)
    assert trader.offers(server.id)[0]["active"] is False
    listed = {s["id"]: s for s in trader.get("marketplace")["servers"]}
    assert listed[server.id]["rented"] is True
    quiet.set_rented(server.id, False)
    assert trader.offers(server.id) == [{**offer, "active": True}]


def test_on_demand_order_rents_the_server(quiet, trader):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 1.2)
    second = Trader(quiet, trader.clock, key="key-2")
    rent = {"currency": CLORE, "image": "img", "renting_server": server.id, "type": "on-demand"}
    assert second.post("create_order", rent) == {"code": 0}
    [rental] = second.my_orders()
    assert rental["spot"] is False and rental["price"] == server.on_demand[CLORE]
    assert trader.offers(server.id) == [{**offer, "active": False}]
    assert trader.post("create_order", rent) == {"error": "server_rented", "code": 6}


def test_a_spot_order_expires_after_the_servers_rental_length(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, floor_of(quiet, server.id) * 1.2)
    created = quiet.order(offer["offer_id"]).created
    clock.set(created + server.mrl_hours * 3600 - 1)
    assert trader.my_orders()[0]["expired"] is False
    clock.set(created + server.mrl_hours * 3600)
    assert trader.my_orders() == [] and trader.my_orders(completed=True)[0]["expired"] is True


def test_errors_are_counted_per_key(quiet, trader):
    server = public_server(quiet)
    trader.post("create_order", {"currency": CLORE, "image": "img", "renting_server": server.id,
                                 "type": "spot", "spotprice": 0.0001})
    trader.post("cancel_order", {"id": 1})
    stats = quiet.stats[trader.key]
    assert stats.codes == {6: 2}
    assert stats.errors == {"price_too_low": 1, "order_not_found": 1}

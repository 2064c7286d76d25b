"""GigaSPOT: get_gigaspot, the CDN snapshot, creating, editing and cancelling bids, who wins."""

from __future__ import annotations

import httpx
import pytest

from bidder.allocation import power_cost_usd_per_day
from bidder.sim.world import CLORE, Machine
from sim_helpers import bid_body, public_server, quiet_market, rentable_machine

NO_FAILURES = {"failed_to_oc_servers": [], "failed_to_rent_servers": [], "too_low_bids_servers": [],
               "code": 0}


def our_bids(snapshot: dict, machine: Machine, user: int) -> list[dict]:
    return [b for b in snapshot[str(machine.id)]["bids"] if b["owner"] == user]


def test_get_gigaspot_names_the_user_and_a_snapshot_on_the_same_server(quiet, trader):
    reply = trader.get("get_gigaspot")
    assert reply["my_user_id"] == quiet.user_id(trader.key)
    assert reply["v1_snapshot_url"].startswith("http://sim.test/cdn/")
    assert reply["v1_snapshot_url"].endswith(f"_{int(trader.clock.now())}.json")
    assert reply["creation_fees"] == {CLORE: 0.045}
    assert reply["clore_price"] == quiet.exchange.clore_usd


def test_a_created_bid_appears_in_the_next_snapshot_and_in_my_orders(quiet, trader):
    machine = rentable_machine(quiet)
    pl = machine.gpu_ranges[0]["pl"][0] + 10
    reply = trader.gigaspot_bid(machine, machine.min_bid * 1.5, pl=pl)
    assert reply == NO_FAILURES  # no order ids in the reply
    _, snapshot = trader.snapshot()
    user = quiet.user_id(trader.key)
    [bid] = our_bids(snapshot, machine, user)
    assert bid == {"owner": user, "id": bid["id"], "active": True, "to_cache": True, "cached": True,
                   "price": machine.min_bid * 1.5, "currency": CLORE, "pl": pl}
    [order] = trader.my_orders()
    assert (order["id"], order["si"], order["price"]) == (bid["id"], machine.id, bid["price"])


def test_create_failure_lists(clock):
    market, trader = quiet_market(clock, gigaspot_machines=200)
    machines = [m for m in market.world.machines.values() if m.rentable]
    good, offline, rented, low = machines[:4]
    unrentable = next(m for m in market.world.machines.values() if m.max_rental_length == 0)
    market.set_online(offline.id, False)
    market.set_rented(rented.id, True)
    wrong_count = bid_body(good, good.min_bid * 2)
    wrong_count["oc"].append({"pl": 100})
    out_of_range = bid_body(good, good.min_bid * 2, pl=good.gpu_ranges[0]["pl"][1] + 1)
    bad_lock = bid_body(good, good.min_bid * 2)
    bad_lock["oc"][0]["core_lock"] = good.gpu_ranges[0]["core_lock"][1] + 1
    reply = trader.post("create_gigaspot_orders", [
        wrong_count, out_of_range, bad_lock,
        bid_body(offline, offline.min_bid * 2), bid_body(rented, rented.min_bid * 2),
        bid_body(unrentable, unrentable.min_bid * 2), {**bid_body(good, 50), "renting_server": 1},
        bid_body(low, low.min_bid * 0.9), bid_body(good, good.min_bid * 2),
    ])
    assert reply == {"failed_to_oc_servers": [good.id, good.id, good.id],
                     "failed_to_rent_servers": [offline.id, rented.id, unrentable.id, 1],
                     "too_low_bids_servers": [low.id], "code": 0}
    assert [o["si"] for o in trader.my_orders()] == [good.id]


def test_edit_gigaspot_orders(quiet, trader, clock):
    machine = rentable_machine(quiet)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    [order] = trader.my_orders()
    rival = quiet.place_rival(rentable_machine(quiet, 1).id, rentable_machine(quiet, 1).min_bid * 2)
    raised = machine.min_bid * 3
    reply = trader.post("edit_gigaspot_orders", [
        {"order_id": order["id"], "price": raised},
        {"order_id": rival.id, "price": rival.price * 2},
        {"order_id": 424242, "price": 10.0},
    ])
    assert reply == {"success_to_update_ids": [order["id"]],
                     "failed_to_update_ids": [rival.id, 424242], "too_low_bid_ids": [], "code": 0}
    ours = [order["id"]]
    assert trader.edit(order["id"], raised * 0.95)["failed_to_update_ids"] == ours  # too soon
    clock.set(quiet.order(order["id"]).created + 600)
    assert trader.edit(order["id"], raised * 0.5)["failed_to_update_ids"] == ours  # too far
    too_low = trader.edit(order["id"], machine.min_bid * 0.99)
    assert too_low["too_low_bid_ids"] == ours and too_low["failed_to_update_ids"] == []
    bad_oc = trader.edit(order["id"], raised, oc=[{"pl": 1}] * machine.gpus)
    assert bad_oc["failed_to_update_ids"] == ours
    assert trader.edit(order["id"], raised * 0.9)["success_to_update_ids"] == ours
    assert quiet.order(order["id"]).price == pytest.approx(raised * 0.9)
    assert rival.price == rentable_machine(quiet, 1).min_bid * 2


def test_gigaspot_lowering_rules_are_their_own_options(clock):
    market, trader = quiet_market(clock, gigaspot_cooldown=0.0, gigaspot_step_rule="fraction:0.5")
    machine = rentable_machine(market)
    trader.gigaspot_bid(machine, machine.min_bid * 4)
    [order] = trader.my_orders()
    assert trader.edit(order["id"], machine.min_bid * 2)["success_to_update_ids"] == [order["id"]]


def test_cancel_orders_any_type_and_lists_what_failed(quiet, trader):
    server, machine = public_server(quiet), rentable_machine(quiet)
    spot = trader.spot_offer(server.id, server.floors[CLORE] * 2)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    giga = next(o for o in trader.my_orders() if o["si"] == machine.id)
    rival = quiet.place_rival(machine.id, machine.min_bid * 1.5)
    ids = [spot["offer_id"], giga["id"], rival.id, 777]
    reply = trader.post("cancel_orders", {"order_ids": ids})
    assert reply == {"failed_to_cancel": [rival.id, 777], "code": 0}
    assert trader.my_orders() == [] and rival.open
    assert quiet.holder(machine.id) is rival


def test_winner_follows_the_allocation_rule(clock):
    def power_range(machine: Machine) -> tuple[int, int]:
        ranges = [g["pl"] for g in machine.gpu_ranges]
        return max(low for low, _ in ranges), min(high for _, high in ranges)

    def winner(rule: str) -> str:
        market, _ = quiet_market(clock, allocation=rule)
        def power_at_stake(m: Machine) -> float:
            low, high = power_range(m)
            return m.rentable * m.energy_price * m.gpus * (high - low)

        machine = max(market.world.machines.values(), key=power_at_stake)
        low_pl, high_pl = power_range(machine)
        frugal = market.place_rival(machine.id, machine.min_bid * 2, pl=low_pl)
        hungry = market.place_rival(machine.id, machine.min_bid * 2.05, pl=high_pl)
        power_gap = (power_cost_usd_per_day(high_pl, machine.gpus, machine.energy_price)
                     - power_cost_usd_per_day(low_pl, machine.gpus, machine.energy_price))
        assert power_gap > machine.min_bid * 0.05 * market.exchange.clore_usd  # the rules disagree
        return {frugal.id: "frugal", hungry.id: "hungry"}[market.holder(machine.id).id]

    assert winner("host_profit") == "frugal"
    assert winner("highest_price") == "hungry"


def test_offline_machines_run_no_bid_but_keep_them(quiet, trader):
    machine = rentable_machine(quiet)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    quiet.set_online(machine.id, False)
    _, snapshot = trader.snapshot()
    entry = snapshot[str(machine.id)]
    assert entry["online"] is False and [b["active"] for b in entry["bids"]] == [False]


def test_snapshot_url_changes_with_the_market_and_old_files_expire(clock):
    market, trader = quiet_market(clock, snapshot_keep=3)
    cdn = httpx.Client(transport=market.transport())
    first = trader.get("get_gigaspot")["v1_snapshot_url"]
    assert trader.get("get_gigaspot")["v1_snapshot_url"] == first  # nothing changed
    machine = rentable_machine(market)
    urls = [first]
    for i in range(3):
        market.place_rival(machine.id, machine.min_bid * (2 + i))
        urls.append(trader.get("get_gigaspot")["v1_snapshot_url"])
        assert urls[-1] != urls[-2] and urls[-1].endswith(f"_{int(clock.now())}.json")
    assert len(cdn.get(urls[-1]).json()[str(machine.id)]["bids"]) == 3
    assert [cdn.get(u).status_code for u in urls] == [404, 200, 200, 200]


def test_snapshot_interval_delays_publication(clock):
    market, trader = quiet_market(clock, snapshot_interval=30.0)
    first = trader.get("get_gigaspot")["v1_snapshot_url"]
    machine = rentable_machine(market)
    market.place_rival(machine.id, machine.min_bid * 2)
    assert trader.get("get_gigaspot")["v1_snapshot_url"] == first
    clock.advance(30)
    assert trader.get("get_gigaspot")["v1_snapshot_url"] != first


def test_orders_live_at_most_20_days(clock):
    market, trader = quiet_market(clock, gigaspot_machines=200)
    machine = next(m for m in market.world.machines.values()
                   if m.rentable and m.max_rental_length > 20 * 86400)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    [order] = trader.my_orders()
    assert order["mrl"] == 20 * 86400
    clock.set(order["ct"] + 20 * 86400 + 1)
    assert trader.my_orders() == []
    assert trader.my_orders(completed=True)[0]["expired"] is True

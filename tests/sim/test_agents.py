"""Competitors: each kind's behaviour on a quiet market, and a lively default market over hours."""

from __future__ import annotations

import httpx

from bidder.allocation import power_cost_usd_per_day
from bidder.clock import ManualClock
from bidder.sim import Agent, Miner, Outbidder, Ratchet, SimMarket, SimOptions
from bidder.sim.agents import clore_up
from bidder.sim.world import CLORE
from sim_helpers import START, Trader, public_server, rentable_machine, spot_order

DAY = 86400.0


def price_now(market: SimMarket, agent: Agent) -> float:
    """The agent's price once the market caught up with the clock (reading the order does not)."""
    assert agent.order is not None
    order = market.order(agent.order.id)
    assert order is not None
    return order.price


def test_an_outbidder_answers_a_bid_after_its_reaction_delay_up_to_its_cap(quiet, trader, clock):
    server = public_server(quiet)
    floor = server.floors[CLORE]
    agent = quiet.add_agent(Outbidder(venue_id=server.id, start_price=floor * 1.1, reaction=60.0,
                                      leave_at=START + DAY, cap=floor * 2))
    assert agent.order is not None and quiet.holder(server.id) is agent.order
    ours = trader.spot_offer(server.id, floor * 1.3)
    assert ours["active"]
    placed = quiet.order(ours["offer_id"]).created
    clock.set(placed + 59)
    assert price_now(quiet, agent) == floor * 1.1
    assert quiet.holder(server.id).id == ours["offer_id"]
    clock.set(placed + 60)
    assert price_now(quiet, agent) == clore_up(floor * 1.3 * 1.01)
    assert quiet.holder(server.id) is agent.order
    trader.set_price(ours["offer_id"], floor * 2.5)
    clock.advance(600)
    assert price_now(quiet, agent) == clore_up(floor * 1.3 * 1.01)  # its cap is 2 x floor
    assert quiet.holder(server.id).id == ours["offer_id"]


def test_a_ratchet_bot_steps_down_each_cooldown_and_raises_when_outbid(quiet, clock):
    server = public_server(quiet)
    floor = server.floors[CLORE]
    agent = quiet.add_agent(Ratchet(venue_id=server.id, start_price=floor * 2, reaction=30.0,
                                    leave_at=START + DAY, cap=floor * 3))
    expected = floor * 2
    for k in range(1, 4):
        clock.set(START + 600 * k - 1)
        assert price_now(quiet, agent) == expected  # not before the cooldown ends
        clock.set(START + 600 * k)
        expected = clore_up(expected * 0.9)
        assert price_now(quiet, agent) == expected
    assert expected == clore_up(clore_up(clore_up(floor * 1.8) * 0.9) * 0.9)
    rival = quiet.place_rival(server.id, floor * 2.2)
    clock.advance(30)
    assert price_now(quiet, agent) == clore_up(floor * 2.2 * 1.01)
    assert quiet.holder(server.id) is agent.order
    quiet.cancel(rival.id)
    clock.advance(12 * 3600)
    assert price_now(quiet, agent) == floor  # stepped all the way down
    assert quiet.holder(server.id) is agent.order


def test_a_miner_bids_up_to_its_revenue_minus_power(quiet, clock):
    machine = rentable_machine(quiet)
    pl = machine.gpu_ranges[0]["pl"][0]
    power = float(power_cost_usd_per_day(pl, machine.gpus, machine.energy_price))
    revenue = machine.min_bid * 2 * quiet.exchange.clore_usd + power  # a cap of 2 x min_bid
    miner = quiet.add_agent(Miner(venue_id=machine.id, start_price=machine.min_bid * 1.1, pl=pl,
                                  reaction=60.0, leave_at=START + DAY, revenue_usd=revenue))
    assert abs(miner.limit(quiet.exchange) - machine.min_bid * 2) < 1e-9
    rival = quiet.place_rival(machine.id, machine.min_bid * 1.5, pl=pl)
    clock.advance(60)
    assert price_now(quiet, miner) == clore_up(machine.min_bid * 1.5 * 1.01)
    assert quiet.holder(machine.id) is miner.order
    quiet.reprice(rival.id, machine.min_bid * 2.5)
    clock.advance(600)
    assert quiet.holder(machine.id) is rival and price_now(quiet, miner) < machine.min_bid * 2


def test_agents_leave_and_remove_agents_clears_the_market(clock):
    options = SimOptions(spot_servers=20, gigaspot_machines=40, spot_agents=10, gigaspot_agents=20,
                         agent_lifetime=1800.0, world_events=False)
    market = SimMarket(options, clock)
    first = {a.user for a in market.agents}
    assert first
    clock.advance(3 * 3600)
    market.advance_to(clock.now())
    assert first - {a.user for a in market.agents}  # some left, others arrived
    market.remove_agents()
    assert market.agents == []
    clock.advance(DAY)
    assert market.agents == []
    assert all(market.holder(v.id) is None for v in market.world.venues())


def test_the_default_market_moves_prices_over_hours(clock):
    market = SimMarket(SimOptions(), clock)
    trader = Trader(market, clock)

    def spot_bids() -> dict[int, float]:
        return {o["offer_id"]: o["bid"] for s in market.world.servers for o in trader.offers(s)}

    def gigaspot_bids() -> dict[int, float]:
        _, snapshot = trader.snapshot()
        return {b["id"]: b["price"] for m in snapshot.values() for b in m["bids"]}

    def moves(old: dict[int, float], new: dict[int, float]) -> tuple[int, int]:
        common = old.keys() & new.keys()
        return sum(new[i] < old[i] for i in common), sum(new[i] > old[i] for i in common)

    giga_before, spot_before = gigaspot_bids(), spot_bids()
    clock.advance(6 * 3600)
    giga_after, spot_after = gigaspot_bids(), spot_bids()
    giga_down, giga_up = moves(giga_before, giga_after)
    spot_down, spot_up = moves(spot_before, spot_after)
    assert giga_down > 0 and giga_up > 0
    assert spot_down + spot_up > 0
    assert giga_before.keys() != giga_after.keys()  # competitors came and went


def test_same_seed_and_requests_give_the_same_replies():
    def run(seed: int) -> list[bytes]:
        clock = ManualClock(START)
        market = SimMarket(SimOptions(seed=seed, spot_servers=20, gigaspot_machines=50), clock)
        http = httpx.Client(transport=market.transport(), base_url="http://sim.test/v1",
                            headers={"auth": "k"})
        cdn = httpx.Client(transport=market.transport())
        listing = http.get("marketplace")
        replies = [listing.content]
        server = next(s for s in listing.json()["servers"] if not s["rented"])
        for step in range(25):
            clock.advance(317)
            if step == 3:
                body = spot_order(server["id"], server["price"]["spot"][CLORE] * 1.5)
                replies.append(http.post("create_order", json=body).content)
            elif step % 2:
                market_reply = http.get("spot_marketplace", params={"market": server["id"]})
                replies.append(market_reply.content)
            else:
                gigaspot = http.get("get_gigaspot")
                replies += [gigaspot.content, cdn.get(gigaspot.json()["v1_snapshot_url"]).content]
        for endpoint in ("my_orders", "wallets"):
            clock.advance(1)
            replies.append(http.get(endpoint).content)
        return replies

    first = run(7)
    assert run(7) == first
    assert run(8) != first

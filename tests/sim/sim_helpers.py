"""Helpers for the simulated market's tests: a raw-httpx user that keeps to the rate limits by
moving the manual clock (tests of the limits call ``http`` directly), doc fixtures, pickers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from bidder.clock import ManualClock
from bidder.sim import SimMarket, SimOptions
from bidder.sim.world import CLORE, Machine, SpotServer

FIXTURES = Path(__file__).parent / "fixtures"
START = 1_700_000_000.0


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Trader:
    """One API key's user, calling the sim in-process with raw httpx."""

    def __init__(self, market: SimMarket, clock: ManualClock, key: str = "key-1") -> None:
        self.market = market
        self.clock = clock
        self.key = key
        self.http = httpx.Client(transport=market.transport(), base_url="http://sim.test/v1",
                                 headers={"auth": key})
        self.cdn = httpx.Client(transport=market.transport())
        self._last = -1e18
        self._last_create = -1e18

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        self._pace(create=False)
        return self.http.get(endpoint, params=params).json()

    def post(self, endpoint: str, body: Any) -> dict[str, Any]:
        self._pace(create=endpoint == "create_order")
        return self.http.post(endpoint, json=body).json()

    def spot_offer(self, server_id: int, price: float, currency: str = CLORE) -> dict[str, Any]:
        """Create a spot offer; return our newest offer on that server (from spot_marketplace)."""
        reply = self.post("create_order", spot_order(server_id, price, currency))
        assert reply == {"code": 0}, reply
        return [o for o in self.offers(server_id) if o["my"]][-1]

    def set_price(self, order_id: int, price: float) -> dict[str, Any]:
        return self.post("set_spot_price", {"order_id": order_id, "desired_price": price})

    def edit(self, order_id: int, price: float, **extra: Any) -> dict[str, Any]:
        return self.post("edit_gigaspot_orders", [{"order_id": order_id, "price": price, **extra}])

    def offers(self, server_id: int) -> list[dict[str, Any]]:
        return self.get("spot_marketplace", market=server_id)["market"]["offers"]

    def gigaspot_bid(self, machine: Machine, price: float, pl: int | None = None) -> dict[str, Any]:
        return self.post("create_gigaspot_orders", [bid_body(machine, price, pl)])

    def snapshot(self) -> tuple[str, dict[str, Any]]:
        url = self.get("get_gigaspot")["v1_snapshot_url"]
        response = self.cdn.get(url)
        assert response.status_code == 200
        return url, response.json()

    def my_orders(self, completed: bool = False) -> list[dict[str, Any]]:
        return self.get("my_orders", return_completed="true" if completed else "false")["orders"]

    def _pace(self, create: bool) -> None:
        due = self._last + 1.0
        if create:
            due = max(due, self._last_create + 5.0)
        if self.clock.now() < due:
            self.clock.set(due)
        self._last = self.clock.now()
        if create:
            self._last_create = self._last


def spot_order(server_id: int, price: float, currency: str = CLORE) -> dict[str, Any]:
    return {"currency": currency, "image": "img", "renting_server": server_id, "type": "spot",
            "spotprice": price}


def quiet_market(clock: ManualClock, **options: Any) -> tuple[SimMarket, Trader]:
    """A small market where nothing moves unless the test moves it, and a user of it."""
    market = SimMarket(SimOptions.quiet(**{"spot_servers": 8, "gigaspot_machines": 12, **options}),
                       clock)
    return market, Trader(market, clock)


def bid_body(machine: Machine, price: float, pl: int | None = None) -> dict[str, Any]:
    watts = pl if pl is not None else machine.gpu_ranges[0]["pl"][0]
    return {"currency": CLORE, "image": "img", "renting_server": machine.id, "price": price,
            "oc": [{"pl": watts} for _ in range(machine.gpus)]}


def public_server(market: SimMarket, index: int = 0) -> SpotServer:
    servers = [s for s in market.world.servers.values() if s.visibility == "public" and s.rentable]
    return servers[index]


def rentable_machine(market: SimMarket, index: int = 0) -> Machine:
    machines = [m for m in market.world.machines.values() if m.rentable and m.working_properly]
    return machines[index]

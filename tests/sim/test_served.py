"""The market on loopback sockets: a client written only from the docs, and `bidder sim` itself."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from bidder.commands import sim as sim_command
from bidder.sim import SimMarket, SimOptions, serve
from sim_helpers import fixture


class DocsClient:
    """What a developer writes from rest-api.md alone: the base URL, an ``auth`` header, JSON in
    and out, a request a second (five before ``create_order``), waiting through ``sleep``."""

    def __init__(self, base_url: str, key: str, sleep: Callable[[float], None]) -> None:
        self.base_url = base_url
        self.headers = {"auth": key, "Content-type": "application/json"}
        self.sleep = sleep

    def get(self, endpoint: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.sleep(1.0)
        return httpx.get(f"{self.base_url}/{endpoint}", headers=self.headers, params=params).json()

    def post(self, endpoint: str, body: Any) -> dict[str, Any]:
        self.sleep(5.0 if endpoint == "create_order" else 1.0)
        return httpx.post(f"{self.base_url}/{endpoint}", headers=self.headers, json=body).json()


def test_a_client_written_from_the_docs_works_against_the_served_market(clock):
    market = SimMarket(SimOptions(seed=3, spot_servers=20, gigaspot_machines=30), clock)
    server = serve(market, port=0)
    try:
        api = DocsClient(server.url, "b8qwqRAL5W7YDyDJeB4XANVvKndbrrPk", clock.sleep)
        wallets = api.get("wallets")
        assert wallets["code"] == 0
        assert {w["name"] for w in wallets["wallets"]} >= {"bitcoin", "CLORE-Blockchain"}

        listing = api.get("marketplace")["servers"]
        target = next(s for s in listing if not s["rented"])
        spot = api.get("spot_marketplace", {"market": target["id"]})
        assert spot["exists"] and spot["market"]["server"]["online"]

        docs = fixture("doc_requests.json")
        bid = target["price"]["spot"]["CLORE-Blockchain"] * 3  # above any competitor's cap
        order_body = {**docs["create_order_spot"], "currency": "CLORE-Blockchain",
                      "renting_server": target["id"], "spotprice": bid}
        assert api.post("create_order", order_body) == {"code": 0}
        orders = api.get("my_orders", {"return_completed": "true"})["orders"]
        mine = [o for o in orders if o["si"] == target["id"]]
        assert len(mine) == 1 and mine[0]["price"] == bid
        order_id = mine[0]["id"]
        offers = api.get("spot_marketplace", {"market": target["id"]})["market"]["offers"]
        assert {"offer_id": order_id, "bid": bid, "active": True, "my": True} in offers

        assert api.post("set_spot_price", {**docs["set_spot_price"], "order_id": order_id,
                                           "desired_price": bid * 1.1}) == {"code": 0}
        lowered = api.post("set_spot_price", {"order_id": order_id, "desired_price": bid * 0.5})
        assert lowered["code"] == 6 and lowered["error"] == "can_lower_every_600_seconds"
        assert api.post("cancel_order", {**docs["cancel_order"], "id": order_id}) == {"code": 0}

        gigaspot = api.get("get_gigaspot")
        assert gigaspot["v1_snapshot_url"].startswith(server.url.removesuffix("/v1"))
        snapshot = httpx.get(gigaspot["v1_snapshot_url"]).json()  # the CDN: no auth header
        machine_id, machine = next(
            (k, m) for k, m in snapshot.items()
            if m["online"] and not m["on_demand_rented"] and m["max_rental_length"] > 0
            and m["working_properly"])
        request = [{"currency": "CLORE-Blockchain", "image": "cloreai/ubuntu22.04-cuda12",
                    "renting_server": int(machine_id), "price": machine["min_bid"] * 4,
                    "oc": [{"pl": gpu["pl"][0]} for gpu in machine["gpus"]]}]
        created = api.post("create_gigaspot_orders", request)
        assert created == {"failed_to_oc_servers": [], "failed_to_rent_servers": [],
                           "too_low_bids_servers": [], "code": 0}
        snapshot = httpx.get(api.get("get_gigaspot")["v1_snapshot_url"]).json()
        [ours] = [b for b in snapshot[machine_id]["bids"] if b["owner"] == gigaspot["my_user_id"]]
        edit = [{"order_id": ours["id"], "price": ours["price"] * 1.1}]
        assert api.post("edit_gigaspot_orders", edit)["success_to_update_ids"] == [ours["id"]]
        cancelled = api.post("cancel_orders", {"order_ids": [ours["id"]]})
        assert cancelled == {"failed_to_cancel": [], "code": 0}
        assert api.get("my_orders")["orders"] == []
    finally:
        server.shutdown()
    assert market.stats["b8qwqRAL5W7YDyDJeB4XANVvKndbrrPk"].codes[5] == 0
    assert market.cdn_stats.with_auth_header == 0 and market.cdn_stats.fetches == 2


def test_bidder_sim_serves_until_sigterm_and_exits_0():
    process = subprocess.Popen(
        [sys.executable, "-m", "bidder", "sim", "--port", "0", "--seed", "5", "--spot-servers", "4",
         "--gigaspot-machines", "4", "--api-key", "only-me", "--quiet-market"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert httpx.get(f"{url}/wallets", headers={"auth": "someone"}).json() == {"code": 3}
        listing = httpx.get(f"{url}/marketplace", headers={"auth": "only-me"}).json()
        assert listing["code"] == 0 and len(listing["servers"]) <= 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_help_describes_every_option():
    parser = argparse.ArgumentParser()
    sim_command.add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    flags = {flag for a in options for flag in a.option_strings}
    assert flags == {"--host", "--port", "--seed", "--api-key", "--speed", "--spot-servers",
                     "--gigaspot-machines", "--step-rule", "--allocation", "--payment",
                     "--quiet-market", "--faults", "--check-db"}
    assert all(a.help and len(a.help) > 15 for a in options)
    assert sim_command.HELP

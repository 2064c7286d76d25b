"""Every field of the docs' reply examples is in the sim's replies, with the same JSON type."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bidder.api.models import (
    GigaspotInfo,
    MarketplaceReply,
    MyOrdersReply,
    Snapshot,
    SpotMarketplaceReply,
    WalletsReply,
)
from bidder.sim.world import CLORE
from sim_helpers import fixture, public_server, rentable_machine

DOCS = fixture("doc_replies.json")


def differences(example: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` lacks a field of ``example`` or has another JSON type (in lists: the first
    items)."""
    if isinstance(example, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object"]
        found = []
        for key, value in example.items():
            inner = f"{path}.{key}"
            found += (differences(value, actual[key], inner) if key in actual
                      else [f"{inner}: missing"])
        return found
    if isinstance(example, list):
        if not isinstance(actual, list):
            return [f"{path}: expected an array"]
        return differences(example[0], actual[0], f"{path}[0]") if example and actual else []
    number = (int, float)
    same_kind = (isinstance(actual, number) if isinstance(example, number)
                 else type(example) is type(actual))
    same = isinstance(example, bool) == isinstance(actual, bool) and same_kind
    return [] if same else [f"{path}: {type(actual).__name__} instead of {type(example).__name__}"]


@pytest.fixture
def busy(quiet, trader):
    """The quiet market with one order of ours on each market (so lists are not empty)."""
    server, machine = public_server(quiet), rentable_machine(quiet)
    trader.spot_offer(server.id, server.floors[CLORE] * 2)
    trader.gigaspot_bid(machine, machine.min_bid * 2)
    return server, machine


@pytest.mark.parametrize("endpoint, model", [
    ("wallets", WalletsReply), ("marketplace", MarketplaceReply), ("my_orders", MyOrdersReply),
    ("get_gigaspot", GigaspotInfo)])
def test_replies_match_the_docs_and_the_bots_models(trader, busy, endpoint, model):
    reply = trader.get(endpoint)
    assert differences(DOCS[endpoint], reply) == []
    model.model_validate(reply)


def test_spot_marketplace_matches_the_docs(trader, busy):
    server, _ = busy
    reply = trader.get("spot_marketplace", market=server.id)
    example = copy.deepcopy(DOCS["spot_marketplace"])
    example["market"]["server"]["min_pricing"] = {CLORE: 1.0}  # the docs' server takes bitcoin only
    assert differences(example, reply) == []
    assert set(reply["currency_rates_in_usd"]) >= set(server.floors)
    SpotMarketplaceReply.model_validate(reply)


def test_snapshot_matches_the_docs(trader, busy):
    _, machine = busy
    _, snapshot = trader.snapshot()
    entry = snapshot[str(machine.id)]
    assert differences(DOCS["snapshot_machine"], entry) == []
    assert list(entry) == list(DOCS["snapshot_machine"])  # same field order
    Snapshot.model_validate(snapshot)


def test_price_errors_match_the_docs(quiet, trader, clock):
    server = public_server(quiet)
    offer = trader.spot_offer(server.id, server.floors[CLORE] * 2)
    too_soon = trader.set_price(offer["offer_id"], offer["bid"] * 0.95)
    clock.advance(600)
    too_far = trader.set_price(offer["offer_id"], offer["bid"] * 0.5)
    for reply, example in ((too_soon, DOCS["can_lower"]), (too_far, DOCS["exceeded_max_step"])):
        assert differences(example, reply) == [] and set(reply) == set(example)

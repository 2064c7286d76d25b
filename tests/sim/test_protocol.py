"""Paths, keys, codes 2/3/4/5, HTTP 429 and the CDN: the parts every endpoint shares."""

from __future__ import annotations

import httpx
import pytest

from bidder.sim import SimMarket
from sim_helpers import Trader, fixture, public_server, quiet_market, spot_order


def client(market: SimMarket, key: str | None = "key-1") -> httpx.Client:
    headers = {"auth": key} if key is not None else {}
    return httpx.Client(transport=market.transport(), base_url="http://sim.test/v1",
                        headers=headers)


def test_missing_or_empty_key_is_code_3(quiet):
    assert client(quiet, None).get("wallets").json() == {"code": 3}
    assert client(quiet, "").get("wallets").json() == {"code": 3}


def test_api_key_option_accepts_only_that_key(clock):
    market, _ = quiet_market(clock, api_key="secret")
    assert client(market, "other").get("wallets").json() == {"code": 3}
    assert client(market, "secret").get("wallets").json()["code"] == 0


def test_any_key_is_its_own_user(quiet):
    first = client(quiet, "alice").get("get_gigaspot").json()["my_user_id"]
    second = client(quiet, "bob").get("get_gigaspot").json()["my_user_id"]
    assert first != second
    assert quiet.user_id("alice") == first and quiet.user_id("bob") == second


def test_unknown_endpoint_is_code_4_before_the_key_is_checked(quiet):
    assert client(quiet).get("no_such_thing").json() == {"code": 4}
    assert client(quiet, None).get("no_such_thing").json() == {"code": 4}


def test_paths_outside_api_and_cdn_are_http_404(quiet):
    response = client(quiet).get("http://sim.test/elsewhere")
    assert response.status_code == 404


def test_one_request_per_second_measured_from_the_last_accepted_one(quiet, clock):
    http = client(quiet)
    assert http.get("wallets").json()["code"] == 0
    assert http.get("marketplace").json() == {"code": 5}
    clock.advance(0.99999)
    assert http.get("my_orders").json() == {"code": 5}
    clock.advance(0.00001 - 5e-7)  # 0.9999995 s after the last accepted request: within 1e-6
    assert http.get("my_orders").json()["code"] == 0
    clock.advance(0.5)
    assert http.get("wallets").json() == {"code": 5}
    stats = quiet.stats["key-1"]
    assert stats.codes == {0: 2, 5: 3}
    assert stats.requests == {"wallets": 2, "marketplace": 1, "my_orders": 2}


def test_rate_limit_is_per_key(quiet):
    assert client(quiet, "a").get("wallets").json()["code"] == 0
    assert client(quiet, "b").get("wallets").json()["code"] == 0


def test_create_order_at_most_every_5_seconds(quiet, clock):
    http = client(quiet)
    server = public_server(quiet)
    body = spot_order(server.id, server.floors["CLORE-Blockchain"])
    assert http.post("create_order", json=body).json() == {"code": 0}
    clock.advance(1)
    assert http.post("create_order", json=body).json() == {"code": 5}
    clock.advance(1)
    assert http.get("wallets").json()["code"] == 0  # other endpoints only need the 1-s gap
    clock.advance(3)  # 5 s after the last accepted create
    assert http.post("create_order", json=body).json() == {"code": 0}
    assert quiet.stats["key-1"].codes[5] == 1


def test_gigaspot_calls_may_answer_http_429_with_retry_after(clock):
    market, _ = quiet_market(clock, gigaspot_limits_http_429=True)
    http = client(market)
    assert http.get("get_gigaspot").status_code == 200
    refused = http.get("get_gigaspot")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    clock.advance(1)
    assert http.get("wallets").status_code == 200
    plain = http.get("wallets")  # not a GigaSPOT call: code 5 in a 200 reply
    assert plain.status_code == 200 and plain.json() == {"code": 5}
    assert market.stats["key-1"].http_429 == 1


def test_default_gigaspot_limit_is_code_5(quiet):
    http = client(quiet)
    http.get("get_gigaspot")
    refused = http.post("cancel_orders", json={"order_ids": []})
    assert refused.status_code == 200 and refused.json() == {"code": 5}


def test_the_invariant_report_says_what_came_too_soon_after_what(quiet, clock):
    """A code-5 reply fails the report; the report names the refused endpoint, how long after the
    key's last accepted request it came and which one that was, so a rare one can be traced."""
    from bidder.sim.invariants import invariant_report

    http = client(quiet)
    http.get("wallets")
    clock.advance(0.4)
    assert http.get("my_orders").json() == {"code": 5}
    report = invariant_report(quiet, None, ["key-1"])
    assert not report.ok and report.code_5 == 1
    [(name, since, previous)] = report.too_fast
    assert (name, previous) == ("my_orders", "wallets") and since == pytest.approx(0.4)
    assert "my_orders 0.400 s after wallets" in report.text()


ORDER = spot_order(7, 1.0)
BID = {"currency": "CLORE-Blockchain", "image": "i", "renting_server": 1, "price": 5.0,
       "oc": [{"pl": 100}]}


def without(body: dict, name: str) -> dict:
    return {k: v for k, v in body.items() if k != name}


@pytest.mark.parametrize("endpoint, body, error", [
    ("create_order", b"{not json", "not valid JSON"),
    ("create_order", [], "JSON object"),
    ("create_order", without(ORDER, "renting_server"), "renting_server: missing"),
    ("create_order", {**ORDER, "renting_server": "7"}, "renting_server: expected an integer"),
    ("create_order", {**ORDER, "spotprice": "1"}, "spotprice: expected a number"),
    ("create_order", without(ORDER, "spotprice"), "spotprice: missing"),
    ("create_order", {**ORDER, "type": "auction"}, "type: expected 'spot' or 'on-demand'"),
    ("create_order", {**ORDER, "env": "A=B"}, "env: expected an object"),
    ("set_spot_price", {"order_id": True, "desired_price": 1.0}, "order_id: expected an integer"),
    ("set_spot_price", {"order_id": 1, "desired_price": -1.0}, "desired_price: expected a pos"),
    ("cancel_order", {"issue": "x"}, "id: missing"),
    ("cancel_order", {"id": 1, "issue": "x" * 2049}, "issue: at most 2048"),
    ("cancel_orders", {"order_ids": "1,2"}, "order_ids: expected an array"),
    ("cancel_orders", {"order_ids": list(range(65))}, "at most 64"),
    ("cancel_orders", {"order_ids": [1.5]}, "array of integers"),
    ("create_gigaspot_orders", BID, "JSON array of objects"),
    ("create_gigaspot_orders", [{**BID, "oc": [{"core_lock": 1000}]}], "pl: missing"),
    ("create_gigaspot_orders", [{**BID, "oc": [{"pl": 100.5}]}], "pl: expected an integer"),
    ("create_gigaspot_orders", [{**BID, "oc": [{"pl": 100, "power": 1}]}], "unknown fields"),
    ("create_gigaspot_orders", [without(BID, "oc")], "oc: missing"),
    ("edit_gigaspot_orders", [{"order_id": 1}], "price: missing"),
])
def test_bad_input_is_code_2_naming_the_problem(quiet, endpoint, body, error):
    http = client(quiet)
    raw = isinstance(body, bytes)
    reply = (http.post(endpoint, content=body) if raw else http.post(endpoint, json=body)).json()
    assert reply["code"] == 2 and error in reply["error"]
    assert quiet.stats["key-1"].codes == {2: 1}


def test_docs_example_body_with_trailing_comma_is_code_2(quiet):
    raw = fixture("doc_requests.json")["create_order_with_trailing_comma"]
    reply = client(quiet).post("create_order", content=raw.encode()).json()
    assert reply["code"] == 2


@pytest.mark.parametrize("params", [{}, {"market": "abc"}])
def test_spot_marketplace_needs_a_market_id(quiet, params):
    assert client(quiet).get("spot_marketplace", params=params).json()["code"] == 2


def test_my_orders_rejects_a_bad_return_completed(quiet):
    assert client(quiet).get("my_orders", params={"return_completed": "maybe"}).json()["code"] == 2


def test_cdn_needs_no_key_is_not_rate_limited_and_counts_leaked_keys(quiet, clock):
    trader = Trader(quiet, clock)
    url = trader.get("get_gigaspot")["v1_snapshot_url"]
    assert url.startswith("http://sim.test/cdn/")
    cdn = httpx.Client(transport=quiet.transport())
    for _ in range(5):  # same instant, no key: never refused
        assert cdn.get(url).status_code == 200
    assert quiet.cdn_stats.with_auth_header == 0
    cdn.get(url, headers={"auth": "key-1"})
    assert quiet.cdn_stats.with_auth_header == 1 and quiet.cdn_stats.fetches == 6
    assert cdn.get(url.replace(".json", "0.json")).status_code == 404
    assert quiet.cdn_stats.not_found == 1

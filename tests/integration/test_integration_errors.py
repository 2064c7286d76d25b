"""Every documented error through the real client against the sim, with the key kept out of every
error's text, and a create whose reply is lost (``OutcomeUnknown``) reconciled with my_orders."""

from __future__ import annotations

import pytest

from bidder.api import (
    InvalidEndpoint,
    InvalidInput,
    InvalidToken,
    OutcomeUnknown,
    RateLimited,
    RequestTimeout,
)
from bidder.sim import SimMarket, SimOptions
from bidder.sim.world import CLORE
from integration_helpers import (
    BASE_URL,
    KEY,
    LosesReplies,
    error_text,
    public_servers,
    spot_order,
)


def raised(error_type, call, *args):
    """The error ``call(*args)`` raises, checked to be ``error_type`` and not to show the key."""
    with pytest.raises(error_type) as info:
        call(*args)
    assert KEY not in error_text(info.value)
    return info.value


def test_invalid_input_is_code_2(client):
    err = raised(InvalidInput, client.spot_marketplace, -5)
    assert err.code == 2 and err.endpoint == "spot_marketplace" and "market" in err.error


def test_a_wrong_key_is_code_3(clock, make_client):
    picky = SimMarket(SimOptions.quiet(spot_servers=2, gigaspot_machines=2,
                                       api_key="the-right-key"), clock)
    transport = picky.transport()
    client = make_client(transport=transport, cdn_transport=transport)
    err = raised(InvalidToken, client.wallets)
    assert err.code == 3
    assert picky.stats[KEY].codes == {3: 1}  # refused at once: not repeated


def test_an_unknown_endpoint_is_code_4(make_client):
    client = make_client(base_url=f"{BASE_URL}/v0")
    err = raised(InvalidEndpoint, client.wallets)
    assert err.code == 4


def test_a_second_budget_for_the_same_key_meets_code_5(make_client, market, events):
    """Two clients of one key that do not share a limiter: the exchange refuses the second."""
    first = make_client()
    impatient = make_client(max_retries=0)
    first.wallets()
    err = raised(RateLimited, impatient.wallets)
    assert err.code == 5 and err.http_status is None

    patient = make_client()
    first.wallets()
    patient.wallets()  # refused once, then waits (backs off) and succeeds
    assert [e.outcome for e in events[-2:]] == ["rate_limited", "ok"]
    assert market.stats[KEY].codes[5] == 2


@pytest.mark.parametrize("options", [SimOptions.quiet(spot_servers=2, gigaspot_machines=4,
                                                      gigaspot_limits_http_429=True)])
def test_gigaspot_calls_may_answer_http_429_with_retry_after(make_client, market):
    first, impatient = make_client(), make_client(max_retries=0)
    first.get_gigaspot()
    err = raised(RateLimited, impatient.get_gigaspot)
    assert (err.http_status, err.retry_after) == (429, 1.0)
    assert market.stats[KEY].http_429 == 1


def test_a_create_whose_reply_is_lost_is_outcome_unknown_and_found_in_my_orders(
        make_client, market, events):
    lossy = LosesReplies(market, lambda request: request.url.path.endswith("/create_order"))
    client = make_client(transport=lossy)
    server = public_servers(market)[0]
    err = raised(OutcomeUnknown, client.create_spot_order,
                 spot_order(server, server.floors[CLORE] * 1.2))
    assert isinstance(err.cause, RequestTimeout) and err.endpoint == "create_order"
    assert market.stats[KEY].requests["create_order"] == 1  # never sent twice
    assert [e.outcome for e in events if e.endpoint == "create_order"] == ["unknown"]

    [order] = [o for o in client.my_orders().orders if o.si == server.id]  # reconciliation
    assert order.price == pytest.approx(server.floors[CLORE] * 1.2)

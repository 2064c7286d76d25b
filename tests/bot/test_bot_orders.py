"""Creating, finding, repricing and cancelling orders through the journal, on a quiet market."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from bot_helpers import KEY, assert_books_agree, assert_one_per_server, book, giga_target, \
    make_config, ours, spot_target
from storage.models import ApiJournal, BotOrderEvent

CHEAPEST_SPOT = 1084
"""GTX 1660 SUPER, floor 11.1014 CLORE/day: the cheapest spot server of the quiet market."""


def journal(database, endpoint=None):
    with database.sessions() as session:
        query = select(ApiJournal).order_by(ApiJournal.id)
        if endpoint is not None:
            query = query.where(ApiJournal.endpoint == endpoint)
        return list(session.scalars(query))


def events(database, local_id):
    with database.sessions() as session:
        return [(e.kind, e.price) for e in session.scalars(
            select(BotOrderEvent).where(BotOrderEvent.order_ref == local_id)
            .order_by(BotOrderEvent.id))]


def test_a_create_is_journaled_before_it_is_sent_and_its_order_found_by_server(rig, database):
    r = rig(make_config(spot_target()))
    seen_at_send = []
    handle = r.market.handle

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/create_order"):
            seen_at_send.extend((e.endpoint, e.status, e.servers) for e in journal(database))
        return handle(request)

    r.market.handle = spy
    r.start()
    r.run(120)
    assert seen_at_send == [("create_order", "pending", [CHEAPEST_SPOT])]
    [order] = ours(r.market)
    assert (order.venue_id, order.price) == (CHEAPEST_SPOT, 11.1014)
    [row] = book(database)
    assert (row.order_id, row.state, row.target, row.market) == (order.id, "live", "s", "spot")
    assert [e.status for e in journal(database, "create_order")] == ["ok"]
    assert [k for k, _ in events(database, row.id)][:3] == ["sending", "created", "confirmed"]
    assert r.market.stats[KEY].requests["create_order"] == 1


def test_an_unknown_create_that_happened_is_found_not_repeated(rig, database):
    r = rig(make_config(spot_target()))
    r.faults.add("create_order", "timeout_after")
    r.start()
    r.run(600)
    assert r.market.stats[KEY].requests["create_order"] == 1
    assert [e.status for e in journal(database, "create_order")] == ["unknown"]
    [row] = book(database)
    assert [k for k, _ in events(database, row.id)][:4] == ["sending", "outcome_unknown",
                                                           "confirmed", "won"]
    assert_books_agree(r.market, database)


def test_an_unknown_create_that_did_not_happen_is_given_up_after_the_grace(rig, database,
                                                                          caplog):
    r = rig(make_config(spot_target()))
    r.faults.add("create_order", "timeout_before")
    r.start()
    r.run(600)
    creates = journal(database, "create_order")
    assert [e.status for e in creates] == ["unknown", "ok"]
    failed = book(database, states=("failed",))
    assert [(o.server_id, o.close_reason) for o in failed] == [
        (CHEAPEST_SPOT, "create not found at Clore")]
    assert "reconciliations (my_orders: no order of ours with si=1084" in caplog.text
    # the second create waited until the first was given up: never two at once
    first_failed_at = failed[0].closed_at
    assert creates[1].at >= first_failed_at
    assert len(ours(r.market)) == 1
    assert_books_agree(r.market, database)


def test_a_gigaspot_batch_is_read_item_by_item(rig, database):
    # three one-GPU machines take pl 150: 21265 (RTX 3070), 21331 (RTX 3060), 21268 (RTX 4080)
    r = rig(make_config(giga_target(count=3, max_gpus_per_server=1)))
    bot = r.start()
    market = r.market
    bot.poll_gigaspot_job()
    market.machine(21265).gpu_ranges[0]["pl"] = [200, 220]  # the snapshot still says 100..220
    market.set_rented(21331, True)  # rented on demand since the snapshot
    market.machine(21268).min_bid = 50.0  # the snapshot still says 13.2667
    bot.decide_job()
    [batch] = journal(database, "create_gigaspot_orders")
    assert batch.status == "ok"
    assert batch.reply == {"code": 0, "failed_to_oc_servers": [21265],
                           "failed_to_rent_servers": [21331], "too_low_bids_servers": [21268]}
    failed = {o.server_id: o.close_reason for o in book(database, states=("failed",))}
    assert failed == {21265: "the machine refused our OC settings",
                      21331: "the machine failed to rent",
                      21268: "the bid is below the machine's minimum"}
    assert ours(market) == []
    # none of them is tried again while blocked; the OC one never again
    market.set_rented(21331, False)
    bot.poll_gigaspot_job()
    bot.decide_job()
    assert len(journal(database, "create_gigaspot_orders")) == 1
    r.clock.advance(3600)
    bot.poll_gigaspot_job()
    bot.decide_job()
    retried = journal(database, "create_gigaspot_orders")[-1]
    assert sorted(item["renting_server"] for item in retried.request) == [21268, 21331]


def test_oc_settings_are_checked_against_each_machine_before_sending(rig, database, caplog):
    # core_lock 2500 is outside RTX 3070 / 3060 ranges (210..2100), inside RTX 4080's (210..3000)
    r = rig(make_config(giga_target(count=3, max_gpus_per_server=1,
                                    oc={"pl": 150, "core_lock": 2500})))
    r.start()
    r.run(60)
    [batch] = journal(database, "create_gigaspot_orders")
    assert [item["renting_server"] for item in batch.request] == [21268]
    assert batch.request[0]["oc"] == [{"pl": 150, "core_lock": 2500}]
    assert "not bidding on GigaSPOT machine 21265 for 'g': core_lock 2500 is outside GPU 0's " \
           "range [210, 2100]" in caplog.text
    assert [o.venue_id for o in ours(r.market)] == [21268]


def test_a_spot_target_moves_when_its_server_goes_offline(rig, database):
    r = rig(make_config(spot_target()))
    r.start()
    r.run(120)
    r.market.set_online(CHEAPEST_SPOT, False)
    r.run(300)
    assert [o.venue_id for o in ours(r.market)] != [CHEAPEST_SPOT]
    assert len(ours(r.market)) == 1
    [cancel] = journal(database, "cancel_orders")
    assert cancel.status == "ok" and cancel.reply == {"code": 0, "failed_to_cancel": []}
    assert_one_per_server(r.market)
    assert_books_agree(r.market, database)

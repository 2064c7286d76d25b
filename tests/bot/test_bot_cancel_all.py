"""``bidder cancel-all``, the kill switch: reconcile, cancel everything of ours (adopted and
unmanaged orders too), journaled; say what could not be cancelled."""

from __future__ import annotations

from sqlalchemy import select

from bidder.api import CloreClient
from bidder.api.models import SpotOrderRequest
from bidder.commands.cancel_all import _list, _print, cancel_all
from bidder.status import collect
from bot_helpers import BASE_URL, KEY, book, giga_target, make_config, ours, spot_target
from storage.models import ApiJournal

UNMATCHED = 1023
"""An RTX 3090 spot server: no target below matches it."""


def held_with_an_unmanaged_order(rig):
    config = make_config(spot_target(gpu_model="GTX 1660"), giga_target(count=2))
    r = rig(config)
    client = CloreClient(KEY, clock=r.clock, base_url=BASE_URL, transport=r.faults.transport())
    client.create_spot_order(SpotOrderRequest(currency="CLORE-Blockchain", image="by-hand",
                                              renting_server=UNMATCHED, spotprice=100.0))
    r.start()
    r.run(600)
    return r, client


def test_unmanaged_orders_are_left_alone_by_the_bot(rig, database):
    r, _ = held_with_an_unmanaged_order(rig)
    [unmanaged] = [o for o in book(database) if o.target is None]
    assert (unmanaged.server_id, unmanaged.adopted, unmanaged.price) == (UNMATCHED, True, 100.0)
    by_hand = next(o for o in ours(r.market) if o.venue_id == UNMATCHED)
    assert by_hand.open and by_hand.price == 100.0
    with database.sessions() as session:
        shown = collect(session, "db", r.clock)
    assert [(o.server_id, o.target) for o in shown.orders if o.target is None] == [
        (UNMATCHED, None)]


def test_cancel_all_cancels_every_order_of_ours(rig, database, capsys):
    r, client = held_with_an_unmanaged_order(rig)
    held = {o.id: o.venue_id for o in ours(r.market)}
    assert len(held) == 1 + 1 + 2  # the spot target, two GigaSPOT machines, the unmanaged one
    assert _list(client, database) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"would cancel {len(held)} orders:")
    assert r.market.stats[KEY].requests["cancel_orders"] == 0

    report = cancel_all(client, database, r.clock, r.config)
    assert dict(report.cancelled) == held and report.left == []
    assert ours(r.market) == [] and book(database) == []
    with database.sessions() as session:
        [entry] = session.scalars(select(ApiJournal).where(
            ApiJournal.endpoint == "cancel_orders")).all()
    assert sorted(entry.request["order_ids"]) == sorted(held) and entry.status == "ok"
    assert _print(report) == 0
    assert capsys.readouterr().out.startswith(f"cancelled {len(held)} orders:")


def test_cancel_all_tries_again_and_reports_what_stays_open(rig, database, capsys):
    r, client = held_with_an_unmanaged_order(rig)
    r.faults.add("cancel_orders", "not_sent")
    report = cancel_all(client, database, r.clock, r.config, passes=1)
    assert report.cancelled == [] and len(report.left) == 4
    assert _print(report) == 1
    assert "NOT cancelled: 4 orders still open or in flight" in capsys.readouterr().out

    r.faults.add("cancel_orders", "timeout_after")  # cancelled, but the reply is lost
    report = cancel_all(client, database, r.clock, r.config)
    assert report.left == [] and ours(r.market) == []

"""``bidder cancel-all``, the kill switch: reconcile, cancel everything of ours (adopted and
unmanaged orders too), journaled; say what could not be cancelled."""

from __future__ import annotations

from sqlalchemy import select

from bidder.api import CloreClient
from bidder.api.models import SpotOrderRequest
from bidder.commands.cancel_all import _list, _print, cancel_all
from bidder.status import collect
from bidder.sim import SimMarket, SimOptions
from bot_helpers import BASE_URL, KEY, assert_books_agree, book, giga_target, make_config, ours, \
    spot_target
from storage.models import ApiJournal

UNMATCHED = 1023
"""An RTX 3090 spot server: no target below matches it."""


def held_with_an_unmanaged_order(rig):
    config = make_config(spot_target(gpu_model="GTX 1660"), giga_target(count=2))
    r = rig(config)
    client = CloreClient(KEY, clock=r.clock, base_url=BASE_URL, transport=r.faults.transport(),
                         cdn_transport=r.faults.transport())
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

    report = cancel_all(client, database, r.clock, r.config, sleep=r.clock.advance)
    assert dict(report.cancelled) == held and report.left == []
    assert ours(r.market) == [] and book(database) == []
    with database.sessions() as session:
        [entry] = session.scalars(select(ApiJournal).where(
            ApiJournal.endpoint == "cancel_orders")).all()
    assert sorted(entry.request["order_ids"]) == sorted(held) and entry.status == "ok"
    assert _print(report) == 0
    assert capsys.readouterr().out.startswith(f"cancelled {len(held)} orders:")


def test_cancel_all_tries_again_and_names_what_it_could_not_cancel(rig, database, capsys):
    r, client = held_with_an_unmanaged_order(rig)
    held = {o.id for o in ours(r.market)}
    for nth in range(1, 40):
        r.faults.add("cancel_orders", "not_sent", nth)
    lines: list[str] = []
    report = cancel_all(client, database, r.clock, r.config, wait=60, every=10,
                        sleep=r.clock.advance, progress=lines.append)
    assert report.cancelled == [] and {order_id for order_id, _ in report.left} == held
    assert _print(report) == 1
    out = capsys.readouterr().out
    assert "NOT cancelled: 4 orders still open or in flight" in out
    assert all(f"  {order_id} on server" in out for order_id in held)
    assert "no order of ours is open" not in out

    r.faults.rules.clear()
    r.faults.add("cancel_orders", "timeout_after")  # cancelled, but the reply is lost
    report = cancel_all(client, database, r.clock, r.config, sleep=r.clock.advance)
    assert report.left == [] and ours(r.market) == []
    assert_books_agree(r.market, database)


def test_cancel_all_amid_in_flight_gigaspot_creates_leaves_nothing_open(rig, clock, database,
                                                                        capsys):
    """``my_orders`` does not list GigaSPOT orders and snapshots come every 5 minutes: the creates
    the bot just sent are found only in a later snapshot. cancel-all waits for them, cancels them
    and says so only once a snapshot taken after its cancel shows nothing of ours."""
    market = SimMarket(SimOptions.quiet(spot_servers=8, gigaspot_machines=12,
                                        gigaspot_in_my_orders="hidden",
                                        snapshot_interval=300.0), clock)
    r = rig(make_config(giga_target(count=3, max_gpus_per_server=1)), market)
    r.start()
    r.run(65)  # a snapshot recorded, the creates sent, not found yet
    assert {o.state for o in book(database)} == {"pending"} and len(ours(market)) == 3
    client = CloreClient(KEY, clock=clock, base_url=BASE_URL, transport=r.faults.transport(),
                         cdn_transport=r.faults.transport())
    lines: list[str] = []
    report = cancel_all(client, database, clock, r.config, sleep=clock.advance,
                        progress=lines.append)
    assert ours(market) == []
    assert report.left == [] and len(report.cancelled) == 3
    assert any(line.startswith("waiting: ") for line in lines)  # it said what it waited for
    assert _print(report) == 0
    assert_books_agree(market, database)


def test_cancel_all_dry_run_creates_no_database(tmp_path, capsys, monkeypatch, quiet):
    from bidder.cli import main

    real = CloreClient.from_config.__func__
    monkeypatch.setattr(CloreClient, "from_config", classmethod(
        lambda cls, api, **kw: real(cls, api, **{**kw, "transport": quiet.transport(),
                                                  "cdn_transport": quiet.transport()})))
    db = tmp_path / "data" / "bidder.db"
    config = tmp_path / "bot.toml"
    config.write_text(f'[api]\nkey = "{KEY}"\nbase_url = "{BASE_URL}"\n'
                      f'[storage]\nurl = "sqlite:///{db}"\n'
                      '[[targets]]\nname = "s"\nmarket = "spot"\ncount = 1\n'
                      'max_price_per_gpu_day = 10.0\n')
    assert main(["cancel-all", "--config", str(config), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("would cancel 0 orders")
    assert "listing the exchange's orders only" in captured.err
    assert not db.exists()

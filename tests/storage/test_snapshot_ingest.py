"""GigaSPOT snapshot ingest: what lands, what is deduplicated, what is refused and what survives."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from freezegun import freeze_time
from sqlalchemy import select

import storage.gigaspot_ingest as gigaspot_ingest
from bidder.api.models import SnapshotMachine
from storage.gigaspot_ingest import SnapshotIngester
from storage.gigaspot_parse import SnapshotError, parse_snapshot, snapshot_time_from_url
from storage.market_views import gigaspot_frame
from storage.models import GigaspotBid, GigaspotSnapshot, MachineFacts, MachineState

T0 = 1735176176


def rows(database, model, *columns):
    with database.sessions() as session:
        return [tuple(r) for r in session.execute(
            select(*(getattr(model, c) for c in columns)).order_by(*model.__table__.primary_key))]


def test_first_snapshot_stores_facts_state_and_bids(database, record, doc_snapshot, row_counts):
    result = record(doc_snapshot, 0, clore_price=0.0321, creation_fees={"CLORE-Blockchain": 0.045},
                    my_user_id=3, url=f"https://cdn.example/prod_6K80i2Tyvm_{T0}.json")

    assert (result.machines, result.new_facts, result.new_states, result.new_bids) == (2, 2, 2, 1)
    assert not result.duplicate
    counts = row_counts()
    assert (counts["gigaspot_snapshot"], counts["gigaspot_machine_facts"],
            counts["gigaspot_machine_state"], counts["gigaspot_bid"]) == (1, 2, 2, 1)
    with database.sessions() as session:
        snap = session.execute(select(GigaspotSnapshot)).scalar_one()
        assert (snap.time, snap.fetched_at, snap.clore_price, snap.my_user_id, snap.machines) == \
            (T0, T0 + 5.0, 0.0321, 3, 2)
        assert snap.creation_fees == {"CLORE-Blockchain": 0.045}
        assert snap.url.endswith(f"_{T0}.json") and snap.source == f"prod_test_{T0}.json"
        facts = session.get(MachineFacts, (35083, 1))
        assert (facts.cpu, facts.cores, facts.threads, facts.ram, facts.cuda, facts.cc, facts.host) == \
            ("Intel(R) Celeron(R) CPU B815 @ 1.60GHz", 2, 2, 3.8036, "11.6", "RU", 2525)
        assert (facts.gpu_count, facts.gpu_model, facts.pl_min, facts.pl_max) == \
            (8, "GTX 1660 SUPER", 70.0, 90.0)
        assert facts.gpus == doc_snapshot["35083"]["gpus"]
        state = session.get(MachineState, (40329, 1))
        assert (state.online, state.on_demand_rented, state.working_properly, state.reliability,
                state.min_bid, state.max_rental_length, state.energy_price, state.end_snapshot) == \
            (False, False, True, 0.6436, 13.4796, 864000, 0.042, None)
        bid = session.get(GigaspotBid, (40329, 542567, 1))
        assert (bid.owner, bid.active, bid.price, bid.pl, bid.to_cache, bid.cached) == \
            (2, True, 0.2, 400.0, True, True)


def test_frame_of_a_recorded_snapshot(database, record, doc_snapshot):
    record(doc_snapshot, 0, clore_price=0.0321, my_user_id=3)
    with database.sessions() as session:
        frame = gigaspot_frame(session, my_user_id=2)

    assert frame.market == "gigaspot" and frame.time == T0 and frame.clore_usd == 0.0321
    assert frame.server_id.tolist() == [35083, 40329]
    assert frame.gpus.tolist() == [8, 1] and frame.gpus.dtype == np.int32
    assert frame.gpu_model.tolist() == ["GTX 1660 SUPER", "RTX 4090"]
    assert frame.country.tolist() == ["RU", "KZ"]
    assert frame.reliability.tolist() == [0.974, 0.6436]
    assert frame.online.tolist() == [True, False]
    assert frame.rentable.tolist() == [True, True]
    assert frame.working_properly.tolist() == [True, True]
    assert frame.energy_price.tolist() == [0.05, 0.042]
    assert frame.pl_min.tolist() == [70.0, 150.0] and frame.pl_max.tolist() == [90.0, 450.0]
    assert frame.observed_at.tolist() == [T0, T0]
    assert frame.floor("CLORE-Blockchain").tolist() == [13.5067, 13.4796]
    assert frame.bid_start.tolist() == [0, 0, 1]
    assert (frame.bid_id.tolist(), frame.bid_owner.tolist(), frame.bid_price.tolist(),
            frame.bid_pl.tolist(), frame.bid_active.tolist(), frame.bid_mine.tolist()) == \
        ([542567], [2], [0.2], [400.0], [True], [True])


def test_frame_marks_our_bids_with_the_recorded_user_by_default(database, record, doc_snapshot):
    record(doc_snapshot, 0, my_user_id=2)
    with database.sessions() as session:
        assert gigaspot_frame(session).bid_mine.tolist() == [True]
        assert gigaspot_frame(session, my_user_id=9).bid_mine.tolist() == [False]


def test_unrentable_machines(database, record, doc_snapshot, changed):
    s = changed(doc_snapshot, ("35083", "max_rental_length"), 0)
    s = changed(s, ("40329", "on_demand_rented"), True)
    record(s)
    with database.sessions() as session:
        assert gigaspot_frame(session).rentable.tolist() == [False, False]


def test_unchanged_snapshot_adds_only_its_own_row(record, doc_snapshot, row_counts):
    record(doc_snapshot, 0)
    before = row_counts()
    result = record(doc_snapshot, 1)

    assert (result.new_facts, result.new_states, result.new_bids, result.closed_states,
            result.closed_bids, result.duplicate) == (0, 0, 0, 0, 0, False)
    after = row_counts()
    assert after.pop("gigaspot_snapshot") == before.pop("gigaspot_snapshot") + 1
    assert after == before


def test_changes_close_and_open_intervals(database, record, doc_snapshot, changed, delete):
    record(doc_snapshot, 0)                                                         # snapshot 1
    m1 = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3)
    m1 = changed(m1, ("35083", "online"), False)
    assert record(m1, 1).new_bids == 1                                              # snapshot 2
    record(m1, 2)                                                                   # 3: unchanged
    m3 = changed(m1, ("40329",), delete)
    result = record(m3, 3)                                                          # 4: 40329 gone
    assert (result.closed_states, result.closed_bids, result.machines) == (1, 1, 1)
    record(m1, 4)                                                                   # 5: it is back

    assert rows(database, MachineState, "machine_id", "first_snapshot", "end_snapshot", "online") == [
        (35083, 1, 2, True), (35083, 2, None, False), (40329, 1, 4, False), (40329, 5, None, False)]
    assert rows(database, GigaspotBid, "bid_id", "first_snapshot", "end_snapshot", "price") == [
        (542567, 1, 2, 0.2), (542567, 2, 4, 0.3), (542567, 5, None, 0.3)]
    # facts outlive the absence: one row per machine, still open
    assert rows(database, MachineFacts, "machine_id", "first_snapshot", "end_snapshot") == [
        (35083, 1, None), (40329, 1, None)]


def test_new_hardware_is_a_new_facts_version(database, record, doc_snapshot, changed):
    record(doc_snapshot, 0)
    gpu = doc_snapshot["40329"]["gpus"][0]
    result = record(changed(doc_snapshot, ("40329", "gpus"), [gpu, {**gpu, "pl": [200, 400]}]), 1)

    assert (result.new_facts, result.new_states, result.new_bids) == (1, 0, 0)
    assert rows(database, MachineFacts, "machine_id", "first_snapshot", "end_snapshot",
                "gpu_count", "pl_min", "pl_max") == [
        (35083, 1, None, 8, 70.0, 90.0), (40329, 1, 2, 1, 150.0, 450.0),
        (40329, 2, None, 2, 200.0, 400.0)]


def test_reimporting_the_same_snapshot_changes_nothing(record, doc_snapshot, row_counts, changed):
    first = record(doc_snapshot, 0)
    before = row_counts()
    again = record(doc_snapshot, 0)

    assert again.duplicate and again.snapshot_id == first.snapshot_id and again.machines == 2
    assert row_counts() == before
    with pytest.raises(SnapshotError, match="a different snapshot for 2024-12-26 01:22:56 UTC is "
                                            "already recorded"):
        record(changed(doc_snapshot, ("35083", "min_bid"), 1.0), 0)
    assert row_counts() == before


def test_older_snapshot_is_refused(record, doc_snapshot, row_counts):
    record(doc_snapshot, 5)
    before = row_counts()
    with pytest.raises(SnapshotError) as err:
        record(doc_snapshot, 4)
    assert str(err.value) == (
        f"snapshot prod_test_{T0 + 240}.json: taken at 2024-12-26 01:26:56 UTC, before the newest "
        "recorded snapshot (2024-12-26 01:27:56 UTC); snapshots are recorded in time order only")
    assert row_counts() == before


def _set(path, value):
    def mutate(snapshot):
        target = snapshot
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return json.dumps(snapshot).encode()
    return mutate


def _drop(path):
    def mutate(snapshot):
        target = snapshot
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
        return json.dumps(snapshot).encode()
    return mutate


BAD_SNAPSHOTS = {
    "mistyped bid price": (_set(("40329", "bids", 0, "price"), "cheap"),
                           "machine 40329: bids[0].price: Input should be a valid number, "
                           "unable to parse string as a number"),
    "missing field": (_drop(("35083", "online")), "machine 35083: online: Field required"),
    "missing bid field": (_drop(("40329", "bids", 0, "owner")),
                          "machine 40329: bids[0].owner: Field required"),
    "short power range": (_set(("35083", "gpus", 3, "pl"), [70]),
                          "machine 35083: gpus[3].pl: List should have at least 2 items after "
                          "validation, not 1"),
    "fractional rental length": (_set(("40329", "max_rental_length"), 1.5),
                                 "machine 40329: max_rental_length: Input should be a valid "
                                 "integer, got a number with a fractional part"),
    "flag that is not one": (_set(("40329", "bids", 0, "active"), "maybe"),
                             "machine 40329: bids[0].active: Input should be a valid boolean, "
                             "unable to interpret input"),
    "machine that is not an object": (_set(("40329",), [1, 2]),
                                      "machine 40329: Input should be a valid dictionary or "
                                      "instance of SnapshotMachine"),
    "machine id that is not a number": (lambda s: json.dumps({**s, "x1": s["35083"]}).encode(),
                                        "machine id 'x1' is not an integer"),
    "bid listed twice": (lambda s: json.dumps(
        {**s, "40329": {**s["40329"], "bids": s["40329"]["bids"] * 2}}).encode(),
        "machine 40329: bids: bid 542567 is listed twice"),
    "truncated file": (lambda s: json.dumps(s).encode()[:-40], "not valid JSON (truncated?)"),
    "NaN price": (lambda s: json.dumps(s).replace('"price": 0.2', '"price": NaN').encode(),
                  "not valid JSON (truncated?)"),
    "not an object": (lambda s: b"[1, 2, 3]", "expected a JSON object of machines, got list"),
}


@pytest.mark.parametrize("name", list(BAD_SNAPSHOTS))
def test_bad_snapshot_is_rejected_and_nothing_is_lost(name, database, record, doc_snapshot,
                                                      row_counts, changed):
    mutate, message = BAD_SNAPSHOTS[name]
    record(doc_snapshot, 0)
    before = row_counts()

    with pytest.raises(SnapshotError) as err:
        record(None, 1, raw=mutate(copy.deepcopy(doc_snapshot)))
    assert str(err.value).startswith(f"snapshot prod_test_{T0 + 60}.json: {message}")
    assert row_counts() == before

    # the ingester carries on from the last good snapshot
    result = record(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.5), 2)
    assert (result.snapshot_id, result.new_bids, result.closed_bids, result.new_states) == (2, 1, 1, 0)
    with database.sessions() as session:
        assert gigaspot_frame(session).bid_price.tolist() == [0.5]
        assert gigaspot_frame(session, at=T0 + 60).bid_price.tolist() == [0.2]


def test_failed_write_leaves_database_and_ingester_unchanged(monkeypatch, database, ingester,
                                                             record, doc_snapshot, row_counts,
                                                             changed):
    record(doc_snapshot, 0)
    before = row_counts()
    real = gigaspot_ingest.executemany

    def failing(connection, statement, names, rows):
        if "bid_id" in names and "owner" in names:
            raise RuntimeError("disk full")
        real(connection, statement, names, rows)

    monkeypatch.setattr(gigaspot_ingest, "executemany", failing)
    update = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.4)
    with pytest.raises(RuntimeError, match="disk full"):
        record(update, 1)
    assert row_counts() == before

    monkeypatch.setattr(gigaspot_ingest, "executemany", real)
    result = record(update, 1)
    assert (result.new_bids, result.closed_bids) == (1, 1)
    # PostgreSQL does not give back the id the failed transaction drew: ids grow, with gaps
    with database.sessions() as session:
        first, second = session.scalars(select(GigaspotSnapshot.id)
                                        .order_by(GigaspotSnapshot.time)).all()
    assert first < second
    assert rows(database, GigaspotBid, "first_snapshot", "end_snapshot", "price") == [
        (first, second, 0.2), (second, None, 0.4)]


def test_another_writer_in_between_is_noticed(database, record, doc_snapshot, changed):
    record(doc_snapshot, 0)
    other = SnapshotIngester(database.sessions)
    m1 = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3)
    other.ingest(json.dumps(m1).encode(), snapshot_time=T0 + 60, fetched_at=0.0, source="other")

    result = record(m1, 2)  # unchanged against what the other writer recorded
    assert (result.new_bids, result.closed_bids, result.new_states) == (0, 0, 0)
    assert rows(database, GigaspotBid, "first_snapshot", "end_snapshot", "price") == [
        (1, 2, 0.2), (2, None, 0.3)]


COERCIONS = {
    "integer price": (("40329", "bids", 0, "price"), 1),
    "price as text": (("40329", "bids", 0, "price"), "0.25"),
    "cores as a whole float": (("35083", "cores"), 4.0),
    "integer reliability": (("35083", "reliability"), 1),
    "power limit as text": (("40329", "bids", 0, "pl"), "350"),
    "flag as 0/1": (("40329", "bids", 0, "cached"), 0),
    "range of floats": (("35083", "gpus", 0, "pl"), [70.5, 99.5]),
}


@pytest.mark.parametrize("name", list(COERCIONS))
def test_quick_check_reads_values_exactly_as_the_api_model(name, doc_snapshot, changed):
    (machine, *path), value = COERCIONS[name]
    snapshot = changed(doc_snapshot, (machine, *path), value)
    parsed = parse_snapshot(json.dumps(snapshot).encode(), "x")
    model = SnapshotMachine.model_validate(snapshot[machine])
    state = parsed.states[int(machine)]
    facts = parsed.facts[int(machine)]

    assert state == (model.online, model.on_demand_rented, model.working_properly,
                     model.reliability, model.min_bid, model.max_rental_length, model.energy_price)
    assert facts[:7] == (model.cpu, model.cores, model.threads, model.ram, model.cuda, model.cc,
                         model.host)
    assert facts.gpus == [g.model_dump(exclude_unset=True) for g in model.gpus]
    assert [b for (m, _), b in parsed.bids.items() if m == int(machine)] == [
        (b.owner, b.active, b.price, b.currency, b.pl, b.to_cache, b.cached) for b in model.bids]


def test_unknown_fields_are_accepted(doc_snapshot, changed):
    snapshot = changed(doc_snapshot, ("40329", "new_field"), {"anything": 1})
    snapshot = changed(snapshot, ("40329", "bids", 0, "new_flag"), True)
    assert len(parse_snapshot(json.dumps(snapshot).encode(), "x").states) == 2


@pytest.mark.parametrize("name, expected", [
    ("https://gigaspot-snapshots.clore.ai/prod_6K80i2Tyvm_1735176176.json", 1735176176),
    ("https://cdn.example/a/prod_x_1735176176.json?sig=abc#frag", 1735176176),
    ("/data/snaps/prod_x_1735176176.json", 1735176176),
    ("prod_1735176176.json", 1735176176),
])
def test_snapshot_time_from_url(name, expected):
    assert snapshot_time_from_url(name) == expected


@pytest.mark.parametrize("name, message", [
    ("prod_x.json", "the name does not end in _<unix time>.json"),
    ("prod_x_1735176176.json.gz", "the name does not end in _<unix time>.json"),
    ("prod_x_1735176176000.json", "1735176176000 in the name is not a plausible UNIX time"),
    ("prod_x_12.json", "12 in the name is not a plausible UNIX time"),
])
def test_snapshot_time_from_bad_names(name, message):
    with pytest.raises(SnapshotError, match=message) as err:
        snapshot_time_from_url(name)
    assert str(err.value).startswith(f"snapshot {name}: ")


def test_record_times_come_from_the_python_clock(database, record, doc_snapshot):
    with freeze_time("2025-02-03 04:05:06", tz_offset=0):
        record(doc_snapshot, 0)
    with database.sessions() as session:
        assert session.scalar(select(GigaspotSnapshot.recorded_at)) == 1738555506.0

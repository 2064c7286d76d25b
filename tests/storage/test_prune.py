"""``bidder db prune``: the market history recorded before a time goes, and nothing any view of
the kept period reads: the live frames, a backtest's history and its metrics come out as before;
the bot's records are never touched; a dry run changes nothing; bad input is one line; and a
recorder writing between the prune's batches keeps its versions right."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.engine import make_url

from bidder.api.models import MarketplaceReply, SpotMarketplaceReply
from bidder.backtest.data import History, load_history
from bidder.backtest.simrecord import record_sim
from bidder.cli import main
from bidder.commands.db import cut_time
from bidder.config import CLORE, parse_config
from bidder.sim.options import SimOptions
from bidder.watchlist import listing_frame
from storage.db import Database, open_database, sqlite_path
from storage.history import bid_intervals, machine_history, snapshot_times
from storage.locks import MARKETPLACE_INGEST
from storage.market_views import gigaspot_frame, spot_frame
from storage.models import (
    BIDS,
    FACTS,
    STATES,
    ApiCall,
    ApiJournal,
    Base,
    BotAlert,
    BotCycle,
    BotDecision,
    BotHalt,
    BotLog,
    BotOrder,
    BotOrderEvent,
    BotRun,
    CurrencyRates,
    GigaspotSnapshot,
    MarketplaceListing,
    MarketplaceServer,
    ServerBlock,
    SpotPoll,
)
from storage.prune import PRUNED_TABLES, SPOT_LOOKBACK, plan_prune, prune
from storage.spot_record import record_marketplace, record_spot_poll

FIXTURES = Path(__file__).parent / "fixtures"
START = 1_700_000_000.0
GAP = 2 * 86_400.0
"""Between the two recording sessions: more than the day of spot polls a prune keeps."""
CUT = START + GAP + 1800.0
"""Half an hour into the second session."""
DAY = 86_400.0
TARGETS = [{"name": "g", "market": "gigaspot", "count": 2, "max_price_per_gpu_day": 80,
            "oc": {"pl": 150}},
           {"name": "s", "market": "spot", "count": 1, "max_price_per_gpu_day": 400}]
SPOT_ONLY = TARGETS[1:]
CONFIG = """
[[targets]]
name = "g"
market = "gigaspot"
count = 2
max_price_per_gpu_day = 80
oc = { pl = 150 }

[[targets]]
name = "s"
market = "spot"
count = 1
max_price_per_gpu_day = 400
"""
T0 = 1735176176
"""The documented example snapshot's time: the storage tests' ``record`` fixture records at
``T0 + 60 * minute``."""
MARKET_TABLES = {t.name for t in PRUNED_TABLES}
BOT_TABLES = sorted(t for t in Base.metadata.tables if t not in MARKET_TABLES)
"""Every other table: the bot's, the currency names, the schema version."""


# --- recordings ---------------------------------------------------------------------------------


def record_two_sessions(db: Database, minutes: tuple[int, int] = (60, 120)) -> None:
    """The simulated market recorded for an hour, then again two days later (the same machines,
    so versions of the first session span the cut), a listing every 20 minutes."""
    options = SimOptions(seed=3, spot_servers=6, gigaspot_machines=30)
    record_sim(db, options, start=START, minutes=minutes[0], listing_every=20)
    record_sim(db, options, start=START + GAP, minutes=minutes[1], listing_every=20)


def add_bot_records(db: Database) -> None:
    """A row in every table of the bot's, all from before the cut."""
    at = START + 10.0
    with db.sessions.begin() as session:
        run = BotRun(mode="live", started_at=at, started_wall=at, speed=1.0, pid=1,
                     config={"targets": ["g"]})
        session.add(run)
        session.flush()
        cycle = BotCycle(run_id=run.id, at=at, wall_at=at, mode="live", actions=1,
                         gigaspot_frame_time=at)
        order = BotOrder(target="g", market="gigaspot", server_id=7, order_id=42, state="live",
                         price=1.25, currency=CLORE, gpus=2, oc=[{"pl": 150}], created_at=at,
                         adopted=False, dry_run=False, lookups=0)
        session.add_all([cycle, order])
        session.flush()
        session.add_all([
            BotDecision(cycle_id=cycle.id, target="g", strategy="outbid", params={}, orders=[],
                        desired=None, actions=[], deferred=[]),
            BotOrderEvent(order_ref=order.id, at=at, kind="created", price=1.25, detail=None),
            ApiJournal(at=at, cycle_id=cycle.id, endpoint="create_order", orders=[order.id],
                       servers=[7], request={"price": 1.25}, status="ok", finished_at=at + 1),
            ApiCall(endpoint="create_order", priority=0, started_at=at, finished_at=at + 1,
                    attempt=1, outcome="ok", cdn=False),
            ServerBlock(server_id=8, target="g", reason="oc refused", at=at, until=None),
            BotLog(at=at, wall_at=at, level="WARNING", source="test", message="kept"),
            BotAlert(run_id=run.id, at=at, wall_at=at, event="outbid", key="g", title="t",
                     body="b", reminder=False, delivery="sent"),
            BotHalt(wall_at=at, reason="test"),
        ])


@pytest.fixture
def recorded(database: Database) -> Database:
    record_two_sessions(database)
    add_bot_records(database)
    return database


@pytest.fixture
def small(database: Database) -> Database:
    """A shorter recording, for the tests that only look at what changes."""
    record_two_sessions(database, minutes=(20, 40))
    add_bot_records(database)
    return database


def listing_reply(servers: Mapping[int, Mapping[str, Any]]) -> MarketplaceReply:
    """A ``marketplace`` reply listing ``servers`` (id -> fields to change in the documented
    example entry)."""
    doc = json.loads((FIXTURES / "marketplace.json").read_text())
    first = doc["servers"][0]
    doc["servers"] = [{**copy.deepcopy(first), "id": sid, **fields}
                      for sid, fields in servers.items()]
    return MarketplaceReply.model_validate(doc)


def poll_reply(bid: float, rates: Mapping[str, float] | None = None) -> SpotMarketplaceReply:
    doc = json.loads((FIXTURES / "spot_marketplace.json").read_text())
    doc["market"]["offers"] = [{"offer_id": 100, "bid": bid, "active": True, "my": False}]
    doc["market"]["server"]["min_pricing"] = {CLORE: 10.0}
    if rates is not None:
        doc["market"]["currency_rates_in_usd"] = dict(rates)
    return SpotMarketplaceReply.model_validate(doc)


# --- reading it ---------------------------------------------------------------------------------


def first_kept_time(db: Database, cut: float) -> float:
    with db.sessions() as session:
        return float(session.scalar(select(func.min(GigaspotSnapshot.time))
                                    .where(GigaspotSnapshot.time >= cut)))


def views(url: str, start: float, end: float | None = None, *,
          spot_times: tuple[float, ...] = (), giga_times: tuple[float, ...] = (),
          targets: list[dict[str, Any]] = TARGETS) -> dict[str, Any]:
    """What the readers make of the period from ``start`` (to ``end``) on, through a reader (as
    the bot, a backtest and ``bidder status`` open the database)."""
    config = parse_config({"targets": targets})
    with open_database(url, writer=False) as db, db.sessions() as session:
        machine = session.scalar(select(STATES.c.machine_id).order_by(STATES.c.machine_id)
                                 .limit(1))
        return {
            "history": load_history(session, config.targets, allocation="host_profit",
                                    start=start, end=end),
            "gigaspot": gigaspot_frame(session),
            "gigaspot_at": [gigaspot_frame(session, at=t) for t in giga_times],
            "spot": spot_frame(session),
            "spot_at": [spot_frame(session, at=t) for t in spot_times],
            "listing": listing_frame(session),
            "snapshots": snapshot_times(session, start, end),
            "bids": bid_intervals(session, start, end),
            "machine": None if machine is None else machine_history(session, machine, start, end),
        }


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal values, floats to within 1e-9 (NaN equal to NaN)."""
    if isinstance(a, History):
        assert isinstance(b, History)
        # the rates table lists every rates row up to the end; a prune drops rows nothing
        # picks any more, so compare the rates each tick sees
        for tick in range(max(a.n_ticks, b.n_ticks)):
            assert_same(dict(a.rates_at(tick)), dict(b.rates_at(tick)), f"{path}.rates_at({tick})")
        for f in dataclasses.fields(a):
            if f.name not in ("rates", "rates_index"):
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and sorted(a) == sorted(b), f"{path}: {sorted(a)} {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape, path
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, equal_nan=True, err_msg=path)
        else:
            assert a.tolist() == b.tolist(), path
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, nan_ok=True), path
    else:
        assert a == b, path


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: to see that nothing changed at all."""
    with open_database(url, writer=False) as db, db.engine.connect() as connection:
        return {name: sorted((tuple(row) for row in connection.execute(select(table))), key=repr)
                for name, table in Base.metadata.tables.items()}


def counts(connection: Connection) -> dict[str, int]:
    return {name: int(connection.scalar(select(func.count()).select_from(table)) or 0)
            for name, table in Base.metadata.tables.items()}


def backtest(url: str, folder: Path, start: float) -> dict[str, Any]:
    config = folder / "prune.toml"
    config.write_text(CONFIG)
    out = folder / f"bt-{len(list(folder.glob('bt-*.json')))}.json"
    # outbid without its market memory: a strategy with one is warmed on the hours before its
    # start, which a prune takes away (the README says so)
    assert main(["backtest", "--config", str(config), "--db", url, "--from", repr(start),
                 "--workers", "1", "--mode", "replay", "--strategy", "outbid:contested_at=0",
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())


def prune_cli(url: str, *args: str) -> int:
    return main(["db", "prune", "--db", url, *args])


# --- the whole command --------------------------------------------------------------------------


def test_a_prune_keeps_every_view_of_the_kept_period_and_every_bot_record(
        recorded, db_url, tmp_path, capsys):
    first = first_kept_time(recorded, CUT)
    at = dict(spot_times=(CUT, CUT + 600.0, CUT + 3000.0),
              giga_times=(first, first + 1200.0, first + 3000.0))
    before = views(db_url, first, **at)
    metrics = backtest(db_url, tmp_path, first)
    with recorded.engine.connect() as connection:
        rows = counts(connection)
        # a version of the first session still valid at the first kept snapshot
        spanning = connection.scalar(select(func.count()).select_from(FACTS).where(
            FACTS.c.first_snapshot < select(func.min(GigaspotSnapshot.id)).where(
                GigaspotSnapshot.time >= CUT).scalar_subquery()))
    assert spanning
    bot = {name: rows_ for name, rows_ in dump(db_url).items() if name in BOT_TABLES}
    capsys.readouterr()

    assert prune_cli(db_url, "--before", repr(CUT)) == 0
    out = capsys.readouterr().out
    assert "removed the market history recorded before" in out and "orders" in out

    assert_same(before, views(db_url, first, **at))
    assert_same(metrics, backtest(db_url, tmp_path, first))
    assert {name: rows_ for name, rows_ in dump(db_url).items() if name in BOT_TABLES} == bot
    with recorded.engine.connect() as connection:
        after = counts(connection)
        assert connection.scalar(select(func.min(GigaspotSnapshot.time))) == first
        assert connection.scalar(select(func.min(SpotPoll.polled_at))) >= CUT - SPOT_LOOKBACK
        f = int(connection.scalar(select(func.min(GigaspotSnapshot.id))))
        for table in (FACTS, STATES, BIDS):  # nothing left that ended before the kept snapshots
            assert connection.scalar(select(func.count()).select_from(table).where(
                table.c.end_snapshot <= f)) == 0
        assert connection.scalar(select(func.count()).select_from(FACTS).where(
            FACTS.c.first_snapshot < f)) == spanning  # valid from f on, as they were
        listing = int(connection.scalar(select(func.min(MarketplaceListing.id))))
        assert connection.scalar(select(func.count()).select_from(MarketplaceServer).where(
            MarketplaceServer.first_listing < listing)) == 0
        assert connection.scalar(select(func.max(MarketplaceListing.taken_at)).where(
            MarketplaceListing.taken_at <= CUT)) is not None  # the listing in effect at the cut
    removed = {name: rows[name] - after[name] for name in rows}
    assert removed["gigaspot_snapshot"] == 60 + 30 and removed["spot_poll"] == 60 * 6
    assert removed["marketplace_listing"] == 3 + 1
    assert all(removed[name] == 0 for name in BOT_TABLES)
    for name, n in removed.items():  # the output says what went
        if n:
            assert f"{name} " in out and f"{n:,}" in out


def test_a_dry_run_changes_nothing_and_says_what_a_prune_removes(small, db_url, capsys):
    everything = dump(db_url)
    assert prune_cli(db_url, "--before", repr(CUT), "--dry-run") == 0
    dry = capsys.readouterr().out
    assert "would remove" in dry and "dry run: nothing changed" in dry
    assert dump(db_url) == everything
    assert prune_cli(db_url, "--before", repr(CUT)) == 0
    done = capsys.readouterr().out
    table_lines = lambda text: [line for line in text.splitlines() if line.startswith("    ")]
    assert table_lines(done) == table_lines(dry) and len(table_lines(done)) >= 5


def test_nothing_older_than_the_cut_changes_nothing_and_a_second_prune_is_harmless(
        small, db_url, capsys):
    everything = dump(db_url)
    assert prune_cli(db_url, "--before", repr(START - 1.0)) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert dump(db_url) == everything

    assert prune_cli(db_url, "--before", repr(CUT)) == 0
    once = dump(db_url)
    capsys.readouterr()
    assert prune_cli(db_url, "--before", repr(CUT)) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert dump(db_url) == once


def test_a_cut_after_everything_keeps_the_newest_snapshot_listing_and_spot_day(
        database, db_url, capsys):
    record_two_sessions(database, minutes=(30, 40))
    with database.sessions() as session:
        newest = session.scalar(select(func.max(GigaspotSnapshot.time)))
        newest_poll = session.scalar(select(func.max(SpotPoll.polled_at)))
    before = views(db_url, float(newest))
    assert prune_cli(db_url, "--before", "2100-01-01") == 0
    out = capsys.readouterr().out
    assert "(the newest: always kept)" in out and "newest poll" in out
    assert_same(before, views(db_url, float(newest)))
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(GigaspotSnapshot)) == 1
        assert session.scalar(select(func.count()).select_from(MarketplaceListing)) == 1
        assert session.scalar(select(func.min(SpotPoll.polled_at))) >= newest_poll - SPOT_LOOKBACK
        assert len(spot_frame(session).server_id) == 6


@pytest.mark.parametrize("args, says", [
    ([], "give --before T"),
    (["--before", "yesterday"], "--before 'yesterday': expected ISO 8601"),
    (["--before", "30x"], "or an age such as 30d"),
])
def test_bad_input_is_one_line_and_changes_nothing(small, db_url, capsys, args, says):
    everything = dump(db_url)
    assert prune_cli(db_url, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bidder db prune: ") and says in err, err
    assert "Traceback" not in err
    assert dump(db_url) == everything


def test_a_database_that_does_not_exist_is_one_line_and_not_made(db_url, db_backend, tmp_path,
                                                                  capsys):
    if db_backend == "sqlite":
        missing = f"sqlite:///{tmp_path / 'nowhere' / 'bidder.db'}"
    else:
        url = make_url(db_url)
        missing = url.set(database=f"{url.database}_missing").render_as_string(
            hide_password=False)
    for extra in ([], ["--dry-run"], ["--vacuum"]):
        assert prune_cli(missing, "--before", "30d", *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("bidder db prune: "), err
        assert "Traceback" not in err
    if db_backend == "sqlite":
        assert "no database at" in err and list(tmp_path.iterdir()) == []
    else:
        assert "does not exist" in err


def test_a_config_names_the_database_and_an_age_is_before_now(small, db_url, tmp_path, capsys):
    config = tmp_path / "bidder.toml"
    config.write_text(f'[storage]\nurl = "{db_url}"\n')
    everything = dump(db_url)
    assert main(["db", "prune", "--config", str(config), "--before", "36500d"]) == 0
    assert "nothing changed" in capsys.readouterr().out  # a century ago: nothing that old
    assert dump(db_url) == everything
    assert main(["db", "prune", "--config", str(config), "--before", "2h"]) == 0
    assert "nothing changed" not in capsys.readouterr().out  # two hours ago: all but the newest
    with small.sessions() as session:
        assert session.scalar(select(func.count()).select_from(GigaspotSnapshot)) == 1


def test_batches_group_keys_up_to_the_row_limit():
    from storage.prune import _ranges

    assert _ranges([(1, 3), (2, 3), (5, 10), (7, 1), (8, 2)], 6) == \
        [(1, 2, 6), (5, 5, 10), (7, 8, 3)]
    assert _ranges([], 6) == []


def test_ages_count_back_from_now():
    now = 1_800_000_000.0
    assert cut_time("30d", now) == pytest.approx(now - 30 * DAY)
    assert cut_time("12h", now) == pytest.approx(now - 12 * 3600)
    assert cut_time("1.5w", now) == pytest.approx(now - 1.5 * 7 * DAY)
    assert cut_time("90m", now) == pytest.approx(now - 5400)
    assert cut_time("2025-01-31T12:00", now) == pytest.approx(1_738_324_800)
    assert cut_time("1738324800", now) == pytest.approx(1_738_324_800)


def test_vacuum_gives_the_space_back_and_says_the_sizes(recorded, db_url, db_backend, capsys):
    assert prune_cli(db_url, "--before", repr(CUT), "--vacuum") == 0
    out = capsys.readouterr().out
    size = [line for line in out.splitlines() if line.strip().startswith("size:")]
    assert len(size) == 1 and "unknown" not in size[0], out
    if db_backend == "sqlite":
        assert "after VACUUM" in size[0]
        numbers = [float(word.replace(",", "")) for word in size[0].split() if word[0].isdigit()]
        assert numbers[1] < numbers[0]
        path = sqlite_path(db_url)
        assert path is not None and not Path(f"{path}-wal").stat().st_size
    else:
        assert "after VACUUM (ANALYZE)" in size[0]
    # asked again with nothing left to prune, it still vacuums, and changes no row
    everything = dump(db_url)
    assert prune_cli(db_url, "--before", repr(CUT), "--vacuum") == 0
    out = capsys.readouterr().out
    assert "nothing changed" in out and "size:" in out
    assert dump(db_url) == everything


# --- the rules, on hand-made recordings ---------------------------------------------------------


def test_rates_go_only_when_no_kept_poll_or_reader_needs_them(database, db_url):
    """Polls every hour for 60 hours, the rates changing every 5 (and an import of older rates
    added late, out of time order): after a prune at hour 50 the live view and a backtest of
    every moment from the kept polls on see the same rates; rows nobody reads are gone."""
    t0 = START
    with database.sessions.begin() as session:
        record_marketplace(session, t0 - 60, listing_reply({1: {}}))
        for hour in range(60):
            rates = {"bitcoin": 60_000.0 + 100 * (hour // 5), CLORE: 0.03}
            record_spot_poll(session, 1, t0 + 3600 * hour, poll_reply(20.0, rates))
        session.add(CurrencyRates(first_seen=t0 + 3600 * 24.5,
                                  rates={"bitcoin": 1.0, CLORE: 0.02}))
    cut = t0 + 50 * 3600
    times = tuple(cut - SPOT_LOOKBACK + 1800 * k for k in range(2 * 34))
    before = views(db_url, cut, spot_times=times, targets=SPOT_ONLY)
    with database.sessions() as session:
        rows_before = session.scalar(select(func.count()).select_from(CurrencyRates))
    with open_database(db_url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, cut)
    assert plan.rows["currency_rates"] > 0
    prune(database.engine, plan, turn=lambda: None)
    assert_same(before, views(db_url, cut, spot_times=times, targets=SPOT_ONLY))
    with database.sessions() as session:
        left = session.scalar(select(func.count()).select_from(CurrencyRates))
        referenced = set(session.scalars(select(SpotPoll.rates_id)))
        ids = set(session.scalars(select(CurrencyRates.id)))
    assert left == rows_before - plan.rows["currency_rates"] and referenced <= ids


def test_a_server_gone_from_the_listings_keeps_its_last_entry_for_the_spot_view(database, db_url):
    """Server 1 leaves the listings before the cut but is still polled after it: the spot view
    reads its last listed GPUs and country, before the prune and after."""
    t0 = START
    with database.sessions.begin() as session:
        record_marketplace(session, t0, listing_reply({1: {}, 2: {}}))
        record_marketplace(session, t0 + 3600, listing_reply({2: {}}))
        record_marketplace(session, t0 + 7200, listing_reply({2: {"rented": True}}))
        for minute in range(60):
            for sid in (1, 2):
                record_spot_poll(session, sid, t0 + 3 * 3600 + 60 * minute + sid,
                                 poll_reply(20.0 + minute))
    cut = t0 + 9000
    times = (cut, cut + 2000, t0 + 4 * 3600)
    before = views(db_url, cut, spot_times=times, targets=SPOT_ONLY)
    assert before["spot"].gpus.tolist() == [1, 1] and before["spot"].country.tolist() == ["CZ"] * 2
    with open_database(db_url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, cut)
    result = prune(database.engine, plan, turn=lambda: None)
    assert result.moved == 1 and result.rows["marketplace_listing"] == 2
    assert_same(before, views(db_url, cut, spot_times=times, targets=SPOT_ONLY))
    with database.sessions() as session:
        entries = session.execute(select(MarketplaceServer.server_id,
                                         MarketplaceServer.first_listing,
                                         MarketplaceServer.end_listing)
                                  .order_by(MarketplaceServer.server_id)).all()
    kept = plan.cut.listing_id
    assert [tuple(e) for e in entries] == [(1, kept, kept), (2, kept, None)]


# --- batches, and a recorder writing between them -----------------------------------------------


@pytest.fixture
def minutes(record, doc_snapshot, changed) -> Callable[[int, int], None]:
    """``minutes(minute, v)``: record the documented snapshot at ``minute`` with values number
    ``v``: its bid's price, machine 35083's reliability and machine 40329's country (so every
    open version of the facts, states and bids changes when ``v`` does)."""

    def _record(minute: int, v: int) -> None:
        snapshot = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.2 + 0.01 * v)
        snapshot = changed(snapshot, ("40329", "cc"), ["KZ", "DE", "FR", "PL", "NL", "SE"][v])
        record(changed(snapshot, ("35083", "reliability"), 0.9 + 0.001 * v), minute)

    return _record


def open_versions_per_key(connection: Connection) -> list[int]:
    """How many open versions each key has (each must have at most one)."""
    out = []
    for table, key in ((FACTS, "machine_id"), (STATES, "machine_id"),
                       (BIDS, "machine_id, bid_id"),
                       (MarketplaceServer.__table__, "server_id")):
        end = "end_listing" if table.name == "marketplace_server" else "end_snapshot"
        out += [int(n) for n in connection.execute(text(
            f"SELECT count(*) FROM {table.name} WHERE {end} IS NULL GROUP BY {key}")).scalars()]
    return out


def test_each_batch_leaves_the_kept_period_readable_and_a_recorder_right(
        database, db_url, minutes):
    """Batches of one row: after each, the readers' view of the kept period is the one before
    the prune, and a recorder records on (GigaSPOT snapshots, listings, polls). Its ingester
    holds the open versions in memory from before the prune, all begun before the cut: when the
    market changes after the prune, it closes each of them, and every key has one open version
    (a prune that moved their first snapshot up would leave the old ones open)."""
    for minute in range(10):
        minutes(minute, min(minute, 4))  # from minute 4 on nothing changes: versions span the cut
    listings = [{1: {"rented": k % 2 == 1}, 2: {}, 3 + k: {}} for k in range(3)]
    with database.sessions.begin() as session:
        for k, listing in enumerate(listings):
            record_marketplace(session, T0 + 180 * k, listing_reply(listing))
    cut, end = T0 + 5 * 60, T0 + 9 * 60
    at = dict(giga_times=tuple(T0 + 60 * m for m in range(5, 10)), spot_times=(cut, cut + 240),
              targets=TARGETS[:1])
    before = views(db_url, cut, end, **at)
    with open_database(db_url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, cut, batch_rows=1)
        full = plan_prune(connection, cut)
    assert plan.rows == full.rows and plan.moved == full.moved > 0
    assert all(b.rows <= 1 for b in plan.batches) and len(plan.batches) > 12
    assert {b.kind for b in plan.batches} == {"snapshots", "versions", "entries", "listings"}
    split = [b for b in plan.batches if b.first is not None]  # a machine's versions, split up
    assert split and len({(b.table, b.lo) for b in split}) < len(split)

    recorded = iter(range(10, 10 + len(plan.batches)))

    def between() -> None:
        minute = next(recorded)
        now = views(db_url, cut, end, **at)  # the newest frames move on as the recorder records
        assert_same(before, now | {k: before[k] for k in ("gigaspot", "spot", "listing")})
        minutes(minute, 4)
        with database.sessions.begin() as session:
            record_marketplace(session, T0 + 60 * minute, listing_reply(listings[-1]))
            record_spot_poll(session, 1, T0 + 60 * minute, poll_reply(20.0))

    result = prune(database.engine, plan, turn=between)
    assert result.batches == len(plan.batches)
    assert result.rows == plan.rows and result.moved == plan.moved
    last = 10 + len(plan.batches)
    minutes(last, 5)  # everything changes
    with database.sessions.begin() as session:
        record_marketplace(session, T0 + 60 * last, listing_reply(
            {1: {"rented": True}, 2: {"reliability": 0.5}}))
    with database.engine.connect() as connection:
        assert set(open_versions_per_key(connection)) == {1}
    with database.sessions() as session:
        frame = gigaspot_frame(session)
        assert frame.time == T0 + 60 * last and frame.server_id.tolist() == [35083, 40329]
        assert frame.bid_price.tolist() == pytest.approx([0.25])
        assert frame.reliability[0] == pytest.approx(0.905) and frame.country[1] == "SE"
        listed = listing_frame(session)
        assert listed is not None and listed.server_id.tolist() == [1, 2]
        assert listed.reliability[1] == pytest.approx(0.5)


def test_the_entries_batch_holds_the_listing_recorders_lock_on_postgresql(pg_url, monkeypatch):
    """On PostgreSQL a listing recorder and the prune's moves of entries take turns."""
    import storage.prune as prune_module

    with open_database(pg_url, writer=True) as db:
        with db.sessions.begin() as session:
            record_marketplace(session, START, listing_reply({1: {}}))
            record_marketplace(session, START + 60, listing_reply({1: {"rented": True}}))
        seen: list[bool] = []
        real = prune_module._deleted

        def deleted(connection: Connection, statement: Any) -> int:
            if statement.table.name == "marketplace_server":
                with db.engine.connect() as other:
                    seen.append(bool(other.scalar(text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                        "granted AND pid <> pg_backend_pid() AND objid::text::bigint = :key"),
                        {"key": MARKETPLACE_INGEST})))
            return real(connection, statement)

        monkeypatch.setattr(prune_module, "_deleted", deleted)
        with db.engine.connect() as connection:
            plan = plan_prune(connection, START + 120)
        prune(db.engine, plan, turn=lambda: None)
    assert seen == [True]


def test_a_turn_is_given_after_every_batch(recorded, db_url):
    with open_database(db_url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, CUT, batch_rows=200)
    turns: list[int] = []
    result = prune(recorded.engine, plan, turn=lambda: turns.append(1))
    assert len(turns) == result.batches == len(plan.batches) > 5
    assert all(b.rows <= 200 for b in plan.batches)


def test_a_failed_batch_is_one_storage_error_and_the_rest_stays_for_the_next_run(
        recorded, db_url, monkeypatch):
    import storage.prune as prune_module
    from storage.errors import StorageError

    first = first_kept_time(recorded, CUT)
    before = views(db_url, first)
    with open_database(db_url, writer=False) as reader, reader.engine.connect() as connection:
        plan = plan_prune(connection, CUT, batch_rows=500)
    real, calls = prune_module._run, []

    def fail_third(connection: Connection, cut: Any, batch: Any) -> Any:
        calls.append(batch)
        if len(calls) == 3:
            connection.execute(insert(GigaspotSnapshot.__table__).values(id=1))  # refused
        return real(connection, cut, batch)

    monkeypatch.setattr(prune_module, "_run", fail_third)
    with pytest.raises(StorageError, match="stopped in .* after 2 of .* run it again"):
        prune(recorded.engine, plan, turn=lambda: None)
    monkeypatch.setattr(prune_module, "_run", real)
    assert_same(before, views(db_url, first))
    assert prune_cli(db_url, "--before", repr(CUT)) == 0
    assert_same(before, views(db_url, first))

"""Schema versions: fresh databases, upgrades that keep data, refusals with clear messages."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest
from sqlalchemy import Connection, create_engine, inspect, select, text
from sqlalchemy.orm import Session

from storage.db import make_engine, open_database, shown_url, sqlite_path
from storage.errors import SchemaVersionError, StorageError
from storage.transfer import reset_sequences
from storage.gigaspot_ingest import SnapshotIngester
from storage.market_views import gigaspot_frame, spot_frame
from storage.migrations import MIGRATIONS, Migration
from storage.models import Base, SchemaVersion
from storage.schema import SCHEMA_VERSION, require_current, schema_version, upgrade

T0 = 1735176176


def sqlite_schema(url: str) -> list[tuple[str, str, str]]:
    """Every table and index as SQLite stores its DDL."""
    with sqlite3.connect(sqlite_path(url)) as conn:
        return sorted(conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall())


def schema_of(url: str) -> dict[str, object]:
    """Every table as the database describes it (columns, keys, indexes with their WHERE), for
    both backends: SQLite's stored DDL is compared too, where there is one."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        tables = {}
        for name in inspector.get_table_names():
            tables[name] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"])
                            for c in inspector.get_columns(name)],
                "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
                "foreign_keys": sorted((tuple(fk["constrained_columns"]), fk["referred_table"],
                                        tuple(fk["referred_columns"]))
                                       for fk in inspector.get_foreign_keys(name)),
                "unique": sorted(tuple(u["column_names"])
                                 for u in inspector.get_unique_constraints(name)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]),
                                   sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()))
                                  for i in inspector.get_indexes(name)),
            }
        if engine.dialect.name == "sqlite":
            tables["sqlite_master"] = sqlite_schema(url)
        return tables
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def version_of(url: str) -> int:
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as connection:
            return schema_version(connection)
    finally:
        engine.dispose()


def test_a_new_database_gets_the_current_schema(db_url):
    with open_database(db_url, writer=True) as db, db.sessions() as session:
        applied = session.execute(select(SchemaVersion.version, SchemaVersion.description)).all()
    assert [v for v, _ in applied] == list(range(1, SCHEMA_VERSION + 1))
    assert applied[0][1].startswith("market recorder")
    assert version_of(db_url) == SCHEMA_VERSION


def test_migrations_build_exactly_the_schema_of_the_models(db_url, fresh_db_url):
    with open_database(db_url, writer=True):
        pass
    models_url = fresh_db_url()
    engine = make_engine(models_url, writer=True)
    Base.metadata.create_all(engine)
    engine.dispose()
    migrated = schema_of(db_url)
    assert {"gigaspot_bid", "bot_order"} <= set(migrated)
    assert migrated == schema_of(models_url)


def seed_v1(connection: Connection) -> None:
    """Data of every v1 table, written as a v1 program would have."""
    for statement in (
        "INSERT INTO gigaspot_snapshot (id, time, fetched_at, recorded_at, source, url, sha256, "
        f"clore_price, creation_fees, my_user_id, machines) VALUES (1, {T0}, {T0 + 4}, {T0 + 5}, "
        "'seed.json', NULL, 'ab', 0.03, '{\"CLORE-Blockchain\": 0.045}', 2, 1)",
        "INSERT INTO currency (id, name) VALUES (1, 'CLORE-Blockchain')",
        "INSERT INTO gigaspot_machine_facts (machine_id, first_snapshot, end_snapshot, cpu, cores, "
        "threads, ram, cuda, cc, host, gpus, gpu_count, gpu_model, pl_min, pl_max) VALUES (40329, 1, "
        "NULL, 'Xeon', 32, 64, 128.8, '12.4', 'KZ', 1, '[{\"pl\": [150, 450], \"model\": "
        "\"RTX 4090\"}]', 1, 'RTX 4090', 150.0, 450.0)",
        "INSERT INTO gigaspot_machine_state (machine_id, first_snapshot, end_snapshot, online, "
        "on_demand_rented, working_properly, reliability, min_bid, max_rental_length, energy_price) "
        "VALUES (40329, 1, NULL, TRUE, FALSE, TRUE, 0.64, 13.48, 864000, 0.042)",
        "INSERT INTO gigaspot_bid (machine_id, bid_id, first_snapshot, end_snapshot, owner, active, "
        "price, currency_id, pl, to_cache, cached) VALUES (40329, 542567, 1, NULL, 2, TRUE, 0.2, 1, "
        "400.0, TRUE, NULL)",
        "INSERT INTO currency_rates (id, first_seen, rates) VALUES (1, 1000.0, '{\"bitcoin\": 6e4}')",
        "INSERT INTO spot_poll (id, server_id, polled_at, market_exists, online, visibility, mrl, "
        "min_pricing, rates_id) VALUES (1, 6, 1000.0, TRUE, TRUE, 'public', 262800, "
        "'{\"bitcoin\": 1e-06}', 1)",
        "INSERT INTO spot_offer (poll_id, offer_id, bid, active, my) VALUES (1, 39, 4.2e-06, TRUE, TRUE)",
        "INSERT INTO marketplace_listing (id, taken_at, servers, my_servers) VALUES (1, 900.0, 1, "
        "'[]')",
        "INSERT INTO marketplace_server (server_id, first_listing, end_listing, owner, mrl, rented, "
        "gpu_model, gpu_count, country, reliability, spot_floors, on_demand, specs) VALUES (6, 1, "
        "NULL, 4, 73, FALSE, 'GTX 1080 Ti', 1, 'CZ', NULL, '{\"bitcoin\": 1e-06}', '{}', NULL)",
    ):
        connection.exec_driver_sql(statement)


def seed_v2(connection: Connection) -> None:
    """v1's data, and a bot run with one cycle, one order, its event and journal entry."""
    seed_v1(connection)
    for statement in (
        "INSERT INTO bot_run (id, mode, started_at, started_wall, speed, pid, config, heartbeat_at, "
        f"heartbeat_wall, stopped_at, stop_reason) VALUES (1, 'live', {T0}, {T0}, 1.0, 7, "
        f"'{{\"targets\": []}}', {T0 + 30}, {T0 + 30}, NULL, NULL)",
        f"INSERT INTO bot_halt (id, wall_at, reason) VALUES (1, {T0 + 60}, 'cancel-all')",
        "INSERT INTO bot_cycle (id, run_id, at, wall_at, mode, spot_frame_time, "
        f"gigaspot_frame_time, skipped, actions) VALUES (1, 1, {T0 + 30}, {T0 + 30}, 'live', NULL, "
        f"{T0}, NULL, 1)",
        "INSERT INTO bot_decision (cycle_id, target, strategy, params, orders, desired, actions, "
        "deferred) VALUES (1, 'g', 'outbid', '{}', '[]', '[{\"server_id\": 40329, \"price\": "
        "0.3}]', '[{\"kind\": \"create\"}]', '[]')",
        "INSERT INTO bot_order (id, target, market, server_id, order_id, state, price, currency, "
        "gpus, oc, sent_at, created_at, confirmed_at, closed_at, close_reason, last_lowered_at, "
        "told_next_lower_at, step_price, step_max, market_state, market_seen_at, adopted, dry_run, "
        f"spend, lookups) VALUES (1, 'g', 'gigaspot', 40329, 542600, 'live', 0.3, "
        f"'CLORE-Blockchain', 1, '[{{\"pl\": 300}}]', {T0 + 30}, {T0 + 31}, {T0 + 32}, NULL, "
        "NULL, NULL, NULL, NULL, NULL, 'winning', NULL, FALSE, FALSE, 0.01, 0)",
        "INSERT INTO bot_order_event (id, order_ref, at, kind, price, detail) VALUES (1, 1, "
        f"{T0 + 31}, 'created', 0.3, NULL)",
        "INSERT INTO api_journal (id, at, cycle_id, endpoint, orders, servers, request, status, "
        f"finished_at, reply, error) VALUES (1, {T0 + 30}, 1, 'create_gigaspot_orders', '[1]', "
        f"'[40329]', '[]', 'ok', {T0 + 31}, NULL, NULL)",
        "INSERT INTO api_call (id, endpoint, priority, started_at, finished_at, attempt, outcome, "
        f"code, error, http_status, cdn) VALUES (1, 'my_orders', 3, {T0}, {T0 + 1}, 1, 'ok', 0, "
        "NULL, 200, FALSE)",
        "INSERT INTO bot_server_block (id, server_id, target, reason, at, until) VALUES (1, 35083, "
        f"'g', 'failed_oc', {T0}, NULL)",
        f"INSERT INTO bot_log (id, at, wall_at, level, source, message) VALUES (1, {T0}, {T0}, "
        "'WARNING', 'bidder.executor', 'adopted order')",
    ):
        connection.exec_driver_sql(statement)


def seed_v3(connection: Connection) -> None:
    """v2's data, and the currency the seeded spot offer states."""
    seed_v2(connection)
    connection.exec_driver_sql("INSERT INTO spot_offer_currency (poll_id, offer_id, currency) "
                               "VALUES (1, 39, 'bitcoin')")


def seed_v4(connection: Connection) -> None:
    """v3's data, and one alert."""
    seed_v3(connection)
    connection.exec_driver_sql(
        "INSERT INTO bot_alert (id, run_id, at, wall_at, event, key, title, body, reminder, "
        f"delivery) VALUES (1, 1, {T0 + 90}, {T0 + 90}, 'market_stale', 'gigaspot', 'stale', "
        "'GigaSPOT data 400 s old', FALSE, 'sent')")


def seed_v5(connection: Connection) -> None:
    """v4's data, and the one-bot lease held by its run."""
    seed_v4(connection)
    connection.exec_driver_sql(
        "UPDATE bot_lease SET token = 'abc', run_id = 1, mode = 'live', pid = 4242, "
        f"host = 'h', acquired_wall = {T0 + 30}, heartbeat_wall = {T0 + 30} WHERE name = 'bot'")


def seed_v6(connection: Connection) -> None:
    """v5's data (version 6 changes indexes only), and a closed bid version beside the open one:
    the frame, read from the open rows' indexes, must not show it."""
    seed_v5(connection)
    connection.exec_driver_sql(
        "INSERT INTO gigaspot_bid (machine_id, bid_id, first_snapshot, end_snapshot, owner, "
        "active, price, currency_id, pl, to_cache, cached) VALUES (40329, 542500, 1, 1, 9, FALSE, "
        "0.1, 1, 300.0, FALSE, NULL)")


def seed_v7(connection: Connection) -> None:
    """v6's data (version 7 adds an index of API calls only)."""
    seed_v6(connection)


SEEDS: dict[int, Callable[[Connection], None]] = {
    1: seed_v1, 2: seed_v2, 3: seed_v3, 4: seed_v4, 5: seed_v5, 6: seed_v6, 7: seed_v7}
"""For every schema version, data as that version stores it. Add one with each migration."""


def test_every_version_has_a_seed():
    assert set(SEEDS) == set(range(1, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("version", sorted(SEEDS))
def test_upgrading_from_each_version_keeps_its_data(version, db_url):
    engine = make_engine(db_url, writer=True)
    assert upgrade(engine, MIGRATIONS[:version]) == version
    with engine.begin() as connection:
        SEEDS[version](connection)
        reset_sequences(connection)  # the seeds give ids, as a v1 program's inserts would have
    assert upgrade(engine) == SCHEMA_VERSION
    engine.dispose()

    with open_database(db_url, writer=False) as db, db.sessions() as session:
        giga = gigaspot_frame(session)
        spot = spot_frame(session)
    assert giga.time == T0 and giga.server_id.tolist() == [40329]
    assert giga.bid_price.tolist() == [0.2] and giga.bid_mine.tolist() == [True]
    assert giga.gpu_model.tolist() == ["RTX 4090"] and giga.clore_usd == 0.03
    assert spot.server_id.tolist() == [6] and spot.bid_id.tolist() == [39]
    assert spot.gpus.tolist() == [1] and spot.country.tolist() == ["CZ"]
    assert spot.rates_usd == {"bitcoin": 6e4}
    assert (spot.bid_currency is None) if version < 3 else spot.bid_currency.tolist() == ["bitcoin"]

    # and recording carries on from the upgraded data
    with open_database(db_url, writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        result = ingester.ingest(b'{"40329": {"bids": [], "on_demand_rented": false, "online": true,'
                                 b' "gpus": [{"pl": [150, 450], "model": "RTX 4090"}],'
                                 b' "working_properly": true, "max_rental_length": 864000,'
                                 b' "reliability": 0.64, "min_bid": 13.48, "energy_price": 0.042,'
                                 b' "cpu": "Xeon", "cores": 32, "threads": 64, "ram": 128.8,'
                                 b' "cuda": "12.4", "cc": "KZ", "host": 1}}',
                                 snapshot_time=T0 + 60, fetched_at=0.0, source="next.json")
    assert (result.new_facts, result.new_states, result.closed_bids) == (0, 0, 1)


def _v_next(connection: Connection) -> None:
    connection.execute(text("CREATE TABLE heartbeat (id INTEGER PRIMARY KEY, at FLOAT NOT NULL)"))
    connection.execute(text("ALTER TABLE gigaspot_snapshot ADD COLUMN note VARCHAR"))
    connection.execute(text("UPDATE gigaspot_snapshot SET note = 'from v' || :v"), {"v": SCHEMA_VERSION})


NEXT = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "test: heartbeat table, snapshot notes", _v_next))


def _recorded(db_url: str, snapshot: dict) -> None:
    """Make ``db_url`` a current-version database holding two snapshots."""
    with open_database(db_url, writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        for minute in range(2):
            ingester.ingest(json.dumps(snapshot).encode(), snapshot_time=T0 + 60 * minute,
                            fetched_at=0.0, source=f"s{minute}.json")


def test_an_upgrade_keeps_recorded_data(db_url, doc_snapshot):
    _recorded(db_url, doc_snapshot)
    with open_database(db_url, writer=False) as db, db.sessions() as session:
        before = gigaspot_frame(session)

    engine = make_engine(db_url, writer=True)
    assert upgrade(engine, NEXT) == SCHEMA_VERSION + 1
    with engine.connect() as connection:
        notes = connection.execute(text("SELECT note FROM gigaspot_snapshot")).scalars().all()
        described = connection.execute(select(SchemaVersion.description)
                                       .where(SchemaVersion.version == SCHEMA_VERSION + 1)).scalar()
    assert notes == [f"from v{SCHEMA_VERSION}"] * 2
    assert described == "test: heartbeat table, snapshot notes"
    with Session(engine) as session:
        after = gigaspot_frame(session)
    engine.dispose()
    for column in ("server_id", "gpus", "reliability", "bid_id", "bid_price", "bid_start"):
        assert getattr(after, column).tolist() == getattr(before, column).tolist()


def test_a_failed_migration_leaves_the_previous_version(db_url, doc_snapshot):
    _recorded(db_url, doc_snapshot)

    def broken(connection: Connection) -> None:
        connection.execute(text("CREATE TABLE half_done (id INTEGER)"))
        raise RuntimeError("bug in migration")

    engine = make_engine(db_url, writer=True)
    with pytest.raises(RuntimeError, match="bug in migration"):
        upgrade(engine, (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "broken", broken)))
    engine.dispose()
    assert version_of(db_url) == SCHEMA_VERSION
    assert "half_done" not in table_names(db_url)


def test_a_reader_never_migrates_and_says_who_can(db_url, doc_snapshot):
    _recorded(db_url, doc_snapshot)
    engine = make_engine(db_url, writer=False)
    with pytest.raises(SchemaVersionError) as err:
        require_current(engine, NEXT)
    engine.dispose()
    assert str(err.value) == (
        f"database {shown_url(db_url)} has schema version {SCHEMA_VERSION}; this "
        f"clore-bidder needs {SCHEMA_VERSION + 1}. Run a command that records (bidder record, "
        "bidder run or bidder import) once to upgrade it; its data is kept.")
    assert version_of(db_url) == SCHEMA_VERSION
    assert "heartbeat" not in table_names(db_url)


@pytest.mark.parametrize("writer", [True, False])
def test_a_database_from_a_newer_program_is_refused(db_url, writer):
    with open_database(db_url, writer=True) as db, db.sessions.begin() as session:
        session.add(SchemaVersion(version=SCHEMA_VERSION + 1, description="from the future"))

    with pytest.raises(SchemaVersionError) as err:
        open_database(db_url, writer=writer)
    assert str(err.value) == (
        f"database {shown_url(db_url)} has schema version {SCHEMA_VERSION + 1}, written "
        f"by a newer clore-bidder; this one knows versions up to {SCHEMA_VERSION}. Upgrade "
        "clore-bidder, or use another database.")


def test_a_reader_refuses_a_missing_database_without_creating_it(sqlite_url):
    with pytest.raises(StorageError, match="no database at .*bidder.db: nothing has been recorded"):
        open_database(sqlite_url, writer=False)
    assert not sqlite_path(sqlite_url).exists()


def test_a_foreign_database_is_refused(db_url):
    engine = make_engine(db_url, writer=True)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE accounts (id INTEGER)"))
    engine.dispose()
    with pytest.raises(StorageError, match=r"is not a clore-bidder database \(it has tables "
                                           r"\['accounts'\] but no schema_version\)"):
        open_database(db_url, writer=True)
    assert table_names(db_url) == {"accounts"}


def test_migrations_must_be_numbered_in_order(db_url):
    engine = make_engine(db_url, writer=True)
    with pytest.raises(ValueError, match=r"numbered 1, 2, 3, ... in order; got \[2\]"):
        upgrade(engine, (Migration(2, "gap", MIGRATIONS[0].apply),))
    engine.dispose()

"""The schema's history: an ordered list of migrations, each bringing version N-1 to N.

Each migration is frozen: it spells out the DDL of its own version in SQLAlchemy Core instead of
reading today's models, because the models change and an old migration must still build the old
schema exactly (so that the next migrations apply to it). ``storage.schema`` runs them, each in its
own transaction, and records them in ``schema_version``.

To change the schema: edit ``storage.models``, append a migration here that turns the previous
version into the new one without losing data (``op``-style DDL plus any data copy), and add a seed
for the old version to the upgrade test. The test suite checks that the migrations build exactly
the schema the models describe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _interval_columns(table: str, key: str, first: str = "first_snapshot",
                      end: str = "end_snapshot") -> list[Column | Index]:
    """The ``first``/``end`` columns of a v1 interval table and its index of open rows."""
    where = text(f"{end} IS NULL")
    return [Column(first, Integer, primary_key=True, autoincrement=False), Column(end, Integer),
            Index(f"ix_{table}_open", key, sqlite_where=where, postgresql_where=where)]


def _v1_market_recorder(connection: Connection) -> None:
    """GigaSPOT snapshots as intervals, spot polls, marketplace listings."""
    md = MetaData()
    Table("gigaspot_snapshot", md,
          Column("id", Integer, primary_key=True),
          Column("time", BigInteger, nullable=False, unique=True),
          Column("fetched_at", Double, nullable=False),
          Column("recorded_at", Double, nullable=False),
          Column("source", String, nullable=False),
          Column("url", String),
          Column("sha256", String(64), nullable=False),
          Column("clore_price", Double),
          Column("creation_fees", JSON),
          Column("my_user_id", BigInteger),
          Column("machines", Integer, nullable=False))
    Table("currency", md,
          Column("id", Integer, primary_key=True),
          Column("name", String, nullable=False, unique=True))
    Table("gigaspot_machine_facts", md,
          Column("machine_id", BigInteger, primary_key=True, autoincrement=False),
          *_interval_columns("gigaspot_machine_facts", "machine_id"),
          Column("cpu", String), Column("cores", Integer), Column("threads", Integer),
          Column("ram", Double), Column("cuda", String), Column("cc", String),
          Column("host", BigInteger), Column("gpus", JSON, nullable=False),
          Column("gpu_count", Integer, nullable=False), Column("gpu_model", String, nullable=False),
          Column("pl_min", Double), Column("pl_max", Double))
    Table("gigaspot_machine_state", md,
          Column("machine_id", BigInteger, primary_key=True, autoincrement=False),
          *_interval_columns("gigaspot_machine_state", "machine_id"),
          *(Column(name, Boolean, nullable=False)
            for name in ("online", "on_demand_rented", "working_properly")),
          Column("reliability", Double, nullable=False), Column("min_bid", Double, nullable=False),
          Column("max_rental_length", BigInteger, nullable=False),
          Column("energy_price", Double, nullable=False))
    Table("gigaspot_bid", md,
          Column("machine_id", BigInteger, primary_key=True, autoincrement=False),
          Column("bid_id", BigInteger, primary_key=True, autoincrement=False),
          *_interval_columns("gigaspot_bid", "machine_id"),
          Column("owner", BigInteger, nullable=False), Column("active", Boolean, nullable=False),
          Column("price", Double, nullable=False),
          Column("currency_id", Integer, ForeignKey("currency.id"), nullable=False),
          Column("pl", Double, nullable=False), Column("to_cache", Boolean), Column("cached", Boolean))
    Table("currency_rates", md,
          Column("id", Integer, primary_key=True),
          Column("first_seen", Double, nullable=False),
          Column("rates", JSON, nullable=False))
    Table("spot_poll", md,
          Column("id", Integer, primary_key=True),
          Column("server_id", BigInteger, nullable=False),
          Column("polled_at", Double, nullable=False, index=True),
          Column("market_exists", Boolean), Column("online", Boolean),
          Column("visibility", String), Column("mrl", BigInteger),
          Column("min_pricing", JSON, nullable=False),
          Column("rates_id", Integer, ForeignKey("currency_rates.id")),
          Index("ix_spot_poll_server_time", "server_id", "polled_at"))
    Table("spot_offer", md,
          Column("poll_id", Integer, ForeignKey("spot_poll.id"), primary_key=True),
          Column("offer_id", BigInteger, primary_key=True, autoincrement=False),
          Column("bid", Double, nullable=False),
          Column("active", Boolean, nullable=False),
          Column("my", Boolean, nullable=False))
    Table("marketplace_listing", md,
          Column("id", Integer, primary_key=True),
          Column("taken_at", Double, nullable=False, index=True),
          Column("servers", Integer, nullable=False),
          Column("my_servers", JSON, nullable=False))
    Table("marketplace_server", md,
          Column("server_id", BigInteger, primary_key=True, autoincrement=False),
          *_interval_columns("marketplace_server", "server_id", "first_listing", "end_listing"),
          Column("owner", BigInteger), Column("mrl", BigInteger), Column("rented", Boolean),
          Column("gpu_model", String, nullable=False), Column("gpu_count", Integer),
          Column("country", String), Column("reliability", Double),
          Column("spot_floors", JSON, nullable=False), Column("on_demand", JSON, nullable=False),
          Column("specs", JSON))
    md.create_all(connection)


def _v2_bot(connection: Connection) -> None:
    """The bot's memory: runs and heartbeat, orders and their events, the write-ahead journal,
    API call attempts, decide cycles and decisions, server blocks, logged problems."""
    md = MetaData()
    Table("bot_run", md,
          Column("id", Integer, primary_key=True),
          Column("mode", String, nullable=False),
          Column("started_at", Double, nullable=False),
          Column("started_wall", Double, nullable=False),
          Column("speed", Double, nullable=False),
          Column("pid", Integer),
          Column("config", JSON, nullable=False),
          Column("heartbeat_at", Double), Column("heartbeat_wall", Double),
          Column("stopped_at", Double), Column("stop_reason", String))
    Table("bot_halt", md,
          Column("id", Integer, primary_key=True),
          Column("wall_at", Double, nullable=False),
          Column("reason", String, nullable=False))
    Table("bot_cycle", md,
          Column("id", Integer, primary_key=True),
          Column("run_id", Integer, ForeignKey("bot_run.id"), nullable=False, index=True),
          Column("at", Double, nullable=False),
          Column("wall_at", Double, nullable=False),
          Column("mode", String, nullable=False),
          Column("spot_frame_time", Double), Column("gigaspot_frame_time", Double),
          Column("skipped", String),
          Column("actions", Integer, nullable=False))
    Table("bot_decision", md,
          Column("cycle_id", Integer, ForeignKey("bot_cycle.id"), primary_key=True),
          Column("target", String, primary_key=True),
          Column("strategy", String, nullable=False),
          *(Column(name, JSON, nullable=False) for name in ("params", "orders")),
          Column("desired", JSON),
          *(Column(name, JSON, nullable=False) for name in ("actions", "deferred")))
    Table("bot_order", md,
          Column("id", Integer, primary_key=True),
          Column("target", String),
          Column("market", String, nullable=False),
          Column("server_id", BigInteger, nullable=False, index=True),
          Column("order_id", BigInteger, index=True),
          Column("state", String, nullable=False),
          Column("price", Double, nullable=False),
          Column("currency", String, nullable=False),
          Column("gpus", Integer, nullable=False),
          Column("oc", JSON),
          Column("sent_at", Double),
          Column("created_at", Double, nullable=False),
          Column("confirmed_at", Double), Column("closed_at", Double),
          Column("close_reason", String),
          *(Column(name, Double) for name in ("last_lowered_at", "told_next_lower_at", "step_price",
                                              "step_max")),
          Column("market_state", String), Column("market_seen_at", Double),
          Column("adopted", Boolean, nullable=False), Column("dry_run", Boolean, nullable=False),
          Column("spend", Double),
          Column("lookups", Integer, nullable=False),
          Index("ix_bot_order_open", "state", "dry_run"))
    Table("bot_order_event", md,
          Column("id", Integer, primary_key=True),
          Column("order_ref", Integer, ForeignKey("bot_order.id"), nullable=False, index=True),
          Column("at", Double, nullable=False),
          Column("kind", String, nullable=False),
          Column("price", Double),
          Column("detail", JSON))
    Table("api_journal", md,
          Column("id", Integer, primary_key=True),
          Column("at", Double, nullable=False, index=True),
          Column("cycle_id", Integer),
          Column("endpoint", String, nullable=False),
          *(Column(name, JSON, nullable=False) for name in ("orders", "servers", "request")),
          Column("status", String, nullable=False),
          Column("finished_at", Double),
          Column("reply", JSON),
          Column("error", String))
    Table("api_call", md,
          Column("id", Integer, primary_key=True),
          Column("endpoint", String, nullable=False),
          Column("priority", Integer, nullable=False),
          Column("started_at", Double, nullable=False, index=True),
          Column("finished_at", Double, nullable=False),
          Column("attempt", Integer, nullable=False),
          Column("outcome", String, nullable=False),
          Column("code", Integer), Column("error", String), Column("http_status", Integer),
          Column("cdn", Boolean, nullable=False))
    Table("bot_server_block", md,
          Column("id", Integer, primary_key=True),
          Column("server_id", BigInteger, nullable=False, index=True),
          Column("target", String, nullable=False),
          Column("reason", String, nullable=False),
          Column("at", Double, nullable=False),
          Column("until", Double))
    Table("bot_log", md,
          Column("id", Integer, primary_key=True),
          Column("at", Double, nullable=False, index=True),
          Column("wall_at", Double, nullable=False),
          *(Column(name, String, nullable=False) for name in ("level", "source", "message")))
    md.create_all(connection)


def _v3_spot_offer_currency(connection: Connection) -> None:
    """The currency a spot offer states (public clients of the API show offers with a
    ``currency``), for the offers that state one: a table of its own, so the offers of older
    polls stay as they were."""
    md = MetaData()
    Table("spot_offer_currency", md,
          Column("poll_id", Integer, primary_key=True, autoincrement=False),
          Column("offer_id", BigInteger, primary_key=True, autoincrement=False),
          Column("currency", String, nullable=False))
    md.create_all(connection)


def _v4_alerts(connection: Connection) -> None:
    """Alerts: what the bot told people (or tried to), for ``bidder status``."""
    md = MetaData()
    Table("bot_alert", md,
          Column("id", Integer, primary_key=True),
          Column("run_id", Integer),
          Column("at", Double, nullable=False, index=True),
          Column("wall_at", Double, nullable=False),
          Column("event", String, nullable=False),
          Column("key", String, nullable=False),
          Column("title", String, nullable=False),
          Column("body", String, nullable=False),
          Column("reminder", Boolean, nullable=False),
          Column("delivery", String, nullable=False))
    md.create_all(connection)
def _v5_bot_lease(connection: Connection) -> None:
    """The one-bot lease: a single row a running bot holds and heartbeats, so a second bot on the
    same database refuses to start."""
    md = MetaData()
    lease = Table("bot_lease", md,
                  Column("name", String, primary_key=True),
                  Column("token", String),
                  Column("run_id", Integer),
                  Column("mode", String),
                  Column("pid", Integer),
                  Column("host", String),
                  Column("acquired_wall", Double),
                  Column("heartbeat_wall", Double))
    md.create_all(connection)
    connection.execute(lease.insert().values(name="bot"))


V6_OPEN_ROWS = {
    "gigaspot_machine_state": ("machine_id", "online", "on_demand_rented", "working_properly",
                               "reliability", "min_bid", "max_rental_length", "energy_price",
                               "end_snapshot"),
    "gigaspot_machine_facts": ("machine_id", "gpu_count", "gpu_model", "cc", "pl_min", "pl_max",
                               "end_snapshot"),
    "gigaspot_bid": ("machine_id", "bid_id", "owner", "price", "pl", "active", "end_snapshot"),
}
"""Per GigaSPOT interval table, the columns of its v6 index of open rows: the key, every column
the live market frame reads, and ``end_snapshot`` (always NULL there), without which SQLite reads
the table row to check the index's own WHERE."""


def _v6_covering_open_rows(connection: Connection) -> None:
    """The index of each GigaSPOT interval table's open rows holds every column the live market
    frame reads, in the frame's order, so the frame (every bot cycle, ``bidder status``) reads
    its ~50,000 rows from these small indexes alone: v1's indexes held only the key, so each row
    was a lookup in a page of its own in the big table, and SQLite read the bids in key order
    through the primary key instead, all of them (seconds at a week of 10,000 machines)."""
    md = MetaData()
    where = text("end_snapshot IS NULL")
    for name, columns in V6_OPEN_ROWS.items():
        connection.execute(text(f"DROP INDEX ix_{name}_open"))
        table = Table(name, md, *(Column(c, Integer) for c in columns))  # the names suffice
        Index(f"ix_{name}_open", *(table.c[c] for c in columns), sqlite_where=where,
              postgresql_where=where).create(connection)


API_CALL_POLL_AGE = ("endpoint", "outcome", "finished_at")
"""The columns of v7's index of API calls, in order: ``bidder status`` asks for the largest
``finished_at`` of one endpoint's successful calls."""


def _v7_api_call_poll_age(connection: Connection) -> None:
    """An index of API calls by endpoint, outcome and finish time, so ``bidder status`` finds the
    last successful poll of each endpoint in one index lookup: it read the whole call journal,
    which grows by a row a second (a month: millions of rows, most of a status call's time)."""
    md = MetaData()
    table = Table("api_call", md, *(Column(c, Integer) for c in API_CALL_POLL_AGE))
    Index("ix_api_call_poll_age", *(table.c[c] for c in API_CALL_POLL_AGE)).create(connection)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "market recorder: GigaSPOT snapshots, spot polls, marketplace listings",
              _v1_market_recorder),
    Migration(2, "bot: runs, orders and their events, call journal, cycles and decisions",
              _v2_bot),
    Migration(3, "the currency spot offers state", _v3_spot_offer_currency),
    Migration(4, "alerts: what the bot told people", _v4_alerts),
    Migration(5, "bot lease: one running bot per database", _v5_bot_lease),
    Migration(6, "the open rows' indexes cover the live market frame", _v6_covering_open_rows),
    Migration(7, "API calls indexed for the last successful poll of each endpoint",
              _v7_api_call_poll_age),
)

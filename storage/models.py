"""The database's tables as typed SQLAlchemy 2.0 models: what the market recorder keeps.

GigaSPOT snapshots are stored as *intervals*: a machine's facts, its state and each of its bids are
one row per version, valid from snapshot ``first_snapshot`` up to (not including) ``end_snapshot``;
``end_snapshot`` is NULL while the version still holds in the newest snapshot. An unchanged
snapshot therefore adds one ``gigaspot_snapshot`` row and nothing else, while a change closes the
old row and opens a new one. Snapshot ids grow with snapshot time (older snapshots are refused), so
``first_snapshot <= id < end_snapshot`` selects the versions that held in snapshot ``id``.

Spot polls are kept one row per poll (with their offers); marketplace listings use the same
interval encoding as snapshots, keyed by listing.

The bot's own memory (schema version 2) lives in the ``bot_*`` and ``api_*`` tables: its runs and
heartbeat, its orders and their history, the write-ahead journal of mutating calls, every API call
attempt, each decide cycle with its decisions (what a replay compares), servers it keeps away from,
and the warnings and errors ``bidder status`` shows.

The interval tables carry no foreign keys on ``first``/``end``: the ingester writes them next to the
snapshot row in one transaction, and the checks would cost a sixth of a fully changed snapshot's
write. Their open rows have a partial index (the ingester loads them at start; the latest market
view reads them) that holds every column the live market frame reads, so the frame, read every bot
cycle, never touches the tables themselves; a machine's history is found through the primary key,
which starts with the id.

These models describe the *current* schema; ``storage.migrations`` builds it step by step, and a
test checks that both agree. Change a table only together with a new migration.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Table, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> float:
    """Bookkeeping time stamps, read at insert time (so freezegun sees them). Market times
    (``fetched_at``, ``polled_at``, ``taken_at``) come from the caller's injected clock."""
    return time.time()


NULLABLE_JSON = JSON(none_as_null=True)
"""The type of a nullable JSON column: Python ``None`` is SQL NULL, which ``IS NULL`` finds, not
the JSON text ``'null'`` (SQLAlchemy's default), which reads back as ``None`` too but is not NULL
in SQL. The DDL is the same, so this needs no migration; databases written before still hold
``'null'`` where a value was missing, so their readers must not take it for a value."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def open_rows_index(table: str, *columns: str, end: str = "end_snapshot") -> Index:
    """An index of an interval table's open rows only (``end`` IS NULL): closed rows leave it.
    ``columns``: the key, then (GigaSPOT, schema version 6) every column the live market frame
    reads and ``end``, so the frame never touches the table itself."""
    where = text(f"{end} IS NULL")
    return Index(f"ix_{table}_open", *columns, sqlite_where=where, postgresql_where=where)


class SchemaVersion(Base):
    """One row per applied migration; the highest ``version`` is the database's schema version."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String)
    applied_at: Mapped[float] = mapped_column(default=_now)


# --- GigaSPOT ------------------------------------------------------------------------------------


class GigaspotSnapshot(Base):
    """One recorded CDN snapshot and what ``get_gigaspot`` said alongside it."""

    __tablename__ = "gigaspot_snapshot"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[int] = mapped_column(BigInteger, unique=True)
    """Snapshot time, UNIX seconds, from the URL's ``_<unix>.json``."""
    fetched_at: Mapped[float]
    recorded_at: Mapped[float] = mapped_column(default=_now)
    source: Mapped[str] = mapped_column(String)
    """Where the bytes came from: the CDN URL or an imported file's path."""
    url: Mapped[str | None] = mapped_column(String)
    sha256: Mapped[str] = mapped_column(String(64))
    """Of the raw file: a second file for the same time with other content is refused."""
    clore_price: Mapped[float | None]
    """USD per CLORE, from ``get_gigaspot``."""
    creation_fees: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)
    my_user_id: Mapped[int | None] = mapped_column(BigInteger)
    machines: Mapped[int] = mapped_column(Integer)


class Currency(Base):
    """Currency names, so each bid version stores a small integer instead of a string."""

    __tablename__ = "currency"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)


class MachineFacts(Base):
    """What a machine *is*; a new version only when the hardware or its place changes (a machine
    leaving the snapshot does not close it: presence is told by ``MachineState``)."""

    __tablename__ = "gigaspot_machine_facts"
    __table_args__ = (open_rows_index("gigaspot_machine_facts", "machine_id", "gpu_count",
                                      "gpu_model", "cc", "pl_min", "pl_max", "end_snapshot"),)

    machine_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_snapshot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    end_snapshot: Mapped[int | None] = mapped_column(Integer)
    cpu: Mapped[str | None] = mapped_column(String)
    cores: Mapped[int | None] = mapped_column(Integer)
    threads: Mapped[int | None] = mapped_column(Integer)
    ram: Mapped[float | None]
    cuda: Mapped[str | None] = mapped_column(String)
    cc: Mapped[str | None] = mapped_column(String)
    host: Mapped[int | None] = mapped_column(BigInteger)
    gpus: Mapped[list[Any]]
    """The GPUs as the snapshot gave them: ``[{pl, mem_lock, core_lock, mem_offset, core_offset,
    model}, ...]`` (OC ranges are ``[min, max]``)."""
    gpu_count: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str] = mapped_column(String)
    """Model of the first GPU."""
    pl_min: Mapped[float | None]
    """Lowest power limit every GPU accepts (max of the minimums)."""
    pl_max: Mapped[float | None]
    """Highest power limit every GPU accepts (min of the maximums)."""


class MachineState(Base):
    """What a machine *does*: closed when a value changes or the machine leaves the snapshot."""

    __tablename__ = "gigaspot_machine_state"
    __table_args__ = (open_rows_index("gigaspot_machine_state", "machine_id", "online",
                                      "on_demand_rented", "working_properly", "reliability",
                                      "min_bid", "max_rental_length", "energy_price",
                                      "end_snapshot"),)

    machine_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_snapshot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    end_snapshot: Mapped[int | None] = mapped_column(Integer)
    online: Mapped[bool]
    on_demand_rented: Mapped[bool]
    working_properly: Mapped[bool]
    reliability: Mapped[float]
    min_bid: Mapped[float]
    """CLORE per day."""
    max_rental_length: Mapped[int] = mapped_column(BigInteger)
    """Seconds; 0 = cannot be rented."""
    energy_price: Mapped[float]
    """USD per kWh."""


class GigaspotBid(Base):
    """One version of one bid on one machine: closed when any value changes or the bid leaves."""

    __tablename__ = "gigaspot_bid"
    __table_args__ = (open_rows_index("gigaspot_bid", "machine_id", "bid_id", "owner", "price",
                                      "pl", "active", "end_snapshot"),)

    machine_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    bid_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_snapshot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    end_snapshot: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool]
    price: Mapped[float]
    """Per server-day in ``currency`` (CLORE)."""
    currency_id: Mapped[int] = mapped_column(ForeignKey("currency.id"))
    pl: Mapped[float]
    """Power limit, watts."""
    to_cache: Mapped[bool | None]
    cached: Mapped[bool | None]


# --- spot market ---------------------------------------------------------------------------------


class CurrencyRates(Base):
    """``currency_rates_in_usd`` as the spot polls gave them, one row per change."""

    __tablename__ = "currency_rates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_seen: Mapped[float]
    rates: Mapped[dict[str, Any]]


class SpotPoll(Base):
    """One ``spot_marketplace`` reply for one server."""

    __tablename__ = "spot_poll"
    __table_args__ = (Index("ix_spot_poll_server_time", "server_id", "polled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(BigInteger)
    polled_at: Mapped[float] = mapped_column(index=True)
    market_exists: Mapped[bool | None]
    """The reply's ``exists``: whether the server has a spot market."""
    online: Mapped[bool | None]
    visibility: Mapped[str | None] = mapped_column(String)
    mrl: Mapped[int | None] = mapped_column(BigInteger)
    """As the reply gave it (documented as seconds here, hours elsewhere)."""
    min_pricing: Mapped[dict[str, Any]]
    """Floor per server-day by currency."""
    rates_id: Mapped[int | None] = mapped_column(ForeignKey("currency_rates.id"))


class SpotOffer(Base):
    """One offer in a spot poll."""

    __tablename__ = "spot_offer"

    poll_id: Mapped[int] = mapped_column(ForeignKey("spot_poll.id"), primary_key=True)
    offer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    bid: Mapped[float]
    active: Mapped[bool]
    my: Mapped[bool]


class SpotOfferCurrency(Base):
    """The currency a spot offer states, for offers that state one (schema version 3); an offer
    without a row here is in the currency the API leaves unsaid. No foreign key: the row is
    written with its offer, in the same transaction."""

    __tablename__ = "spot_offer_currency"

    poll_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    offer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(String)


class MarketplaceListing(Base):
    """One ``marketplace`` reply (spot discovery), taken now and then."""

    __tablename__ = "marketplace_listing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[float] = mapped_column(index=True)
    servers: Mapped[int] = mapped_column(Integer)
    my_servers: Mapped[list[Any]]


class MarketplaceServer(Base):
    """One version of one server's marketplace entry, valid from listing ``first_listing`` up to
    (not including) ``end_listing``."""

    __tablename__ = "marketplace_server"
    __table_args__ = (open_rows_index("marketplace_server", "server_id", end="end_listing"),)

    server_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_listing: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    end_listing: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[int | None] = mapped_column(BigInteger)
    mrl: Mapped[int | None] = mapped_column(BigInteger)
    rented: Mapped[bool | None]
    gpu_model: Mapped[str] = mapped_column(String)
    """From ``specs.gpu`` ("2x NVIDIA GeForce RTX 4090" -> "NVIDIA GeForce RTX 4090"); "" unknown."""
    gpu_count: Mapped[int | None] = mapped_column(Integer)
    country: Mapped[str | None] = mapped_column(String)
    reliability: Mapped[float | None]
    spot_floors: Mapped[dict[str, Any]]
    on_demand: Mapped[dict[str, Any]]
    specs: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)


# The interval tables as Core tables, for bulk statements and column queries.
FACTS: Table = MachineFacts.__table__  # type: ignore[assignment]
STATES: Table = MachineState.__table__  # type: ignore[assignment]
BIDS: Table = GigaspotBid.__table__  # type: ignore[assignment]


# --- the bot (schema version 2) ------------------------------------------------------------------
# Times are UNIX seconds of the bot's clock (accelerated in a simulation) unless named ``wall``.


class BotRun(Base):
    """One run of ``bidder run``: what it was told, and its heartbeat (written every cycle)."""

    __tablename__ = "bot_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String)
    """``live``, ``dry-run`` or ``sim``."""
    started_at: Mapped[float]
    started_wall: Mapped[float]
    speed: Mapped[float]
    """Bot seconds per wall second (1 live; the simulation's speed)."""
    pid: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any]]
    """What ``bidder status`` needs without the config file: targets, budget, market rules and bot
    settings (no key, no secrets)."""
    heartbeat_at: Mapped[float | None]
    heartbeat_wall: Mapped[float | None]
    stopped_at: Mapped[float | None]
    stop_reason: Mapped[str | None] = mapped_column(String)


class BotLease(Base):
    """The one-bot lease (a single row, ``name`` = ``bot``): the run holding it (``token``, NULL
    when free) heartbeats ``heartbeat_wall``; a second bot refuses to start while it is fresh."""

    __tablename__ = "bot_lease"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    token: Mapped[str | None] = mapped_column(String)
    run_id: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String)
    acquired_wall: Mapped[float | None]
    heartbeat_wall: Mapped[float | None]


class BotHalt(Base):
    """The kill switch: ``bidder cancel-all`` writes one; a bot started before it stops trading."""

    __tablename__ = "bot_halt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wall_at: Mapped[float]
    reason: Mapped[str] = mapped_column(String)


class BotCycle(Base):
    """One decide/execute cycle (or a skipped one, with the reason)."""

    __tablename__ = "bot_cycle"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("bot_run.id"), index=True)
    at: Mapped[float]
    wall_at: Mapped[float]
    mode: Mapped[str] = mapped_column(String)
    spot_frame_time: Mapped[float | None]
    """Time of the spot frame decided on (its newest poll); NULL when none was used."""
    gigaspot_frame_time: Mapped[float | None]
    """Time of the GigaSPOT snapshot decided on; NULL when none was used."""
    skipped: Mapped[str | None] = mapped_column(String)
    """Why nothing was decided (stale or empty market data, halted); NULL for a full cycle."""
    actions: Mapped[int] = mapped_column(Integer)
    """Actions planned."""


class BotDecision(Base):
    """One target in one cycle: the strategy's input and output and the rules engine's plan."""

    __tablename__ = "bot_decision"

    cycle_id: Mapped[int] = mapped_column(ForeignKey("bot_cycle.id"), primary_key=True)
    target: Mapped[str] = mapped_column(String, primary_key=True)
    strategy: Mapped[str] = mapped_column(String)
    params: Mapped[dict[str, Any]]
    orders: Mapped[list[Any]]
    """The ``OwnOrder``s given to the strategy (as dicts)."""
    desired: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSON)
    """``[{server_id, price}]``; NULL when the strategy asked for no change (or was not asked)."""
    actions: Mapped[list[Any]]
    """This target's planned actions (``{kind, ...}``) in execution order."""
    deferred: Mapped[list[Any]]
    """This target's ``Deferred`` wishes."""


class BotOrder(Base):
    """One order of ours, from the moment we decide to send it to its end.

    ``state``: ``creating`` (written before the create is sent), ``pending`` (sent, id not found
    yet), ``unknown`` (a call's outcome is unknown: reconcile first), ``live``, then ``closed`` or
    ``failed``. ``order_id`` is the exchange's id (negative for dry-run orders).
    """

    __tablename__ = "bot_order"
    __table_args__ = (Index("ix_bot_order_open", "state", "dry_run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str | None] = mapped_column(String)
    """NULL: an adopted order no target matches (unmanaged: only ``cancel-all`` touches it)."""
    market: Mapped[str] = mapped_column(String)
    server_id: Mapped[int] = mapped_column(BigInteger, index=True)
    order_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    state: Mapped[str] = mapped_column(String)
    price: Mapped[float]
    """Per server-day in ``currency``."""
    currency: Mapped[str] = mapped_column(String)
    gpus: Mapped[int] = mapped_column(Integer)
    oc: Mapped[list[Any] | None] = mapped_column(NULLABLE_JSON)
    """GigaSPOT power settings sent, one per GPU."""
    sent_at: Mapped[float | None]
    """When the create was written to the journal (before it was sent)."""
    created_at: Mapped[float]
    """When the create's reply came (or the order was adopted): the start of its cooldown."""
    confirmed_at: Mapped[float | None]
    """When its exchange id was found."""
    closed_at: Mapped[float | None]
    close_reason: Mapped[str | None] = mapped_column(String)
    last_lowered_at: Mapped[float | None]
    told_next_lower_at: Mapped[float | None]
    """The earliest lowering the exchange told us (``time_to_lowering``) or we inferred."""
    step_price: Mapped[float | None]
    """``StepKnowledge.price``: the price when a lowering was refused."""
    step_max: Mapped[float | None]
    """``StepKnowledge.max_step``: the lowest price allowed then."""
    market_state: Mapped[str | None] = mapped_column(String)
    """``winning`` / ``outbid`` from the latest market data; NULL until seen."""
    market_seen_at: Mapped[float | None]
    adopted: Mapped[bool]
    dry_run: Mapped[bool]
    spend: Mapped[float | None]
    """Spent so far in ``currency`` (``my_orders``), when known."""
    lookups: Mapped[int] = mapped_column(Integer)
    """Reconciliations that looked for this create's order and did not find it."""


class BotOrderEvent(Base):
    """What happened to an order: created, confirmed, raised, lowered, step_learned, cooldown_told,
    outbid, won, cancelled, closed, adopted, failed, ..."""

    __tablename__ = "bot_order_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_ref: Mapped[int] = mapped_column(ForeignKey("bot_order.id"), index=True)
    at: Mapped[float]
    kind: Mapped[str] = mapped_column(String)
    price: Mapped[float | None]
    detail: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON)


class ApiJournal(Base):
    """The write-ahead journal: a mutating call, committed before it is sent, and its outcome.

    ``status``: ``pending`` (written, outcome not recorded: the process died or the call is in
    flight), ``ok``, ``error`` (refused; ``reply`` says why), ``unknown``, ``not_sent``, ``dry_run``.
    """

    __tablename__ = "api_journal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(index=True)
    cycle_id: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String)
    orders: Mapped[list[Any]]
    """Local ``bot_order`` ids the call is about."""
    servers: Mapped[list[Any]]
    request: Mapped[Any] = mapped_column(JSON)
    """The body, secrets (ssh keys, passwords, tokens, env values) redacted."""
    status: Mapped[str] = mapped_column(String)
    finished_at: Mapped[float | None]
    reply: Mapped[Any | None] = mapped_column(NULLABLE_JSON)
    error: Mapped[str | None] = mapped_column(String)


class ApiCall(Base):
    """One attempt of one API call (``CallEvent``): the rate budget and faults in ``status``."""

    __tablename__ = "api_call"
    __table_args__ = (Index("ix_api_call_poll_age", "endpoint", "outcome", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String)
    priority: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(index=True)
    finished_at: Mapped[float]
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String)
    code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String)
    http_status: Mapped[int | None] = mapped_column(Integer)
    cdn: Mapped[bool]


class ServerBlock(Base):
    """A server the bot keeps away from: a refused OC (for good), a failed rent, a too-low bid."""

    __tablename__ = "bot_server_block"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(BigInteger, index=True)
    target: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(String)
    at: Mapped[float]
    until: Mapped[float | None]
    """NULL: for good."""


class BotLog(Base):
    """Warnings and errors the bot logged (``bidder status`` shows the last ones)."""

    __tablename__ = "bot_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(index=True)
    wall_at: Mapped[float]
    level: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)
    message: Mapped[str] = mapped_column(String)


class BotAlert(Base):
    """An alert raised by the bot (``bidder.alerts``): recorded when raised, ``delivery`` filled in
    by the sender thread (``queued``, ``sent``, ``failed: ...``, ``no urls``, ``dropped``)."""

    __tablename__ = "bot_alert"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(Integer)
    """The bot run that raised it (None: ``cancel-all``, ``alerts test``)."""
    at: Mapped[float] = mapped_column(index=True)
    """The bot's clock (simulated time in a simulation)."""
    wall_at: Mapped[float]
    event: Mapped[str] = mapped_column(String)
    key: Mapped[str] = mapped_column(String)
    """What the episode is about (a target, a market, an order); one alert per episode."""
    title: Mapped[str] = mapped_column(String)
    body: Mapped[str] = mapped_column(String)
    reminder: Mapped[bool]
    delivery: Mapped[str] = mapped_column(String)

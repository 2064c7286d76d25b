"""The database's tables as typed SQLAlchemy 2.0 models: what the market recorder keeps.

GigaSPOT snapshots are stored as *intervals*: a machine's facts, its state and each of its bids are
one row per version, valid from snapshot ``first_snapshot`` up to (not including) ``end_snapshot``;
``end_snapshot`` is NULL while the version still holds in the newest snapshot. An unchanged
snapshot therefore adds one ``gigaspot_snapshot`` row and nothing else, while a change closes the
old row and opens a new one. Snapshot ids grow with snapshot time (older snapshots are refused), so
``first_snapshot <= id < end_snapshot`` selects the versions that held in snapshot ``id``.

Spot polls are kept one row per poll (with their offers); marketplace listings use the same
interval encoding as snapshots, keyed by listing.

The interval tables carry no foreign keys on ``first``/``end``: the ingester writes them next to the
snapshot row in one transaction, and the checks would cost a sixth of a fully changed snapshot's
write. Their open rows have a partial index (the ingester loads them at start; the latest market
view reads them); a machine's history is found through the primary key, which starts with the id.

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


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def open_rows_index(table: str, key: str, end: str = "end_snapshot") -> Index:
    """An index of an interval table's open rows only (``end`` IS NULL): closed rows leave it."""
    where = text(f"{end} IS NULL")
    return Index(f"ix_{table}_open", key, sqlite_where=where, postgresql_where=where)


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
    creation_fees: Mapped[dict[str, Any] | None]
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
    __table_args__ = (open_rows_index("gigaspot_machine_facts", "machine_id"),)

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
    __table_args__ = (open_rows_index("gigaspot_machine_state", "machine_id"),)

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
    __table_args__ = (open_rows_index("gigaspot_bid", "machine_id"),)

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
    __table_args__ = (open_rows_index("marketplace_server", "server_id", "end_listing"),)

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
    specs: Mapped[dict[str, Any] | None]


# The interval tables as Core tables, for bulk statements and column queries.
FACTS: Table = MachineFacts.__table__  # type: ignore[assignment]
STATES: Table = MachineState.__table__  # type: ignore[assignment]
BIDS: Table = GigaspotBid.__table__  # type: ignore[assignment]

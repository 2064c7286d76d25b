"""Record the spot market: every ``spot_marketplace`` poll, and ``marketplace`` listings.

The caller owns the transaction (``with sessions.begin() as session: record_spot_poll(...)``), so a
poll round can be recorded in one commit. Polls are kept one row each; currency rates, the same in
nearly every poll, are stored again only when they change. A listing is interval-encoded like a
GigaSPOT snapshot: a server's entry is written again only when it changes. Listings of one
database are recorded one at a time (on PostgreSQL by an advisory lock, ``storage.locks``), so two
processes never both diff against the same open entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from bidder.api.models import MarketplaceReply, MarketplaceServer, SpotMarketplaceReply
from storage.intervals import diff_versions
from storage.locks import MARKETPLACE_INGEST, serialise
from storage.models import (
    CurrencyRates,
    MarketplaceListing,
    MarketplaceServer as ListedServer,
    SpotOffer,
    SpotOfferCurrency,
    SpotPoll,
)

_GPU_SPEC = re.compile(r"^\s*(\d+)\s*[xX]\s*(.+?)\s*$")


def parse_gpu_spec(spec: str | None) -> tuple[int | None, str]:
    """``"2x NVIDIA GeForce RTX 4090"`` -> ``(2, "NVIDIA GeForce RTX 4090")``; the count is
    ``None`` when the text does not start with one, the model ``""`` when there is no text."""
    if not spec or not spec.strip():
        return None, ""
    match = _GPU_SPEC.match(spec)
    return (int(match.group(1)), match.group(2)) if match else (None, spec.strip())


def _require_ok(reply: SpotMarketplaceReply | MarketplaceReply, what: str) -> None:
    if reply.code != 0:
        raise ValueError(f"not recording a failed {what} reply (code {reply.code})")


def _rates_id(session: Session, rates: dict[str, float], seen_at: float) -> int:
    latest = session.execute(select(CurrencyRates).order_by(CurrencyRates.id.desc()).limit(1)
                             ).scalar_one_or_none()
    if latest is not None and latest.rates == rates:
        return latest.id
    row = CurrencyRates(first_seen=seen_at, rates=dict(rates))
    session.add(row)
    session.flush()
    return row.id


def record_spot_poll(session: Session, server_id: int, polled_at: float,
                     reply: SpotMarketplaceReply) -> int:
    """Record one ``spot_marketplace?market=<server_id>`` reply; returns the poll's id."""
    _require_ok(reply, "spot_marketplace")
    market = reply.market
    server = market.server if market is not None else None
    offers = market.offers if market is not None else []
    offer_ids = [o.offer_id for o in offers]
    if len(set(offer_ids)) != len(offer_ids):
        raise ValueError(f"spot_marketplace reply for server {server_id} lists an offer twice: "
                         f"{sorted({i for i in offer_ids if offer_ids.count(i) > 1})}")
    rates = reply.rates_in_usd()
    poll = SpotPoll(
        server_id=server_id, polled_at=polled_at, market_exists=reply.exists,
        online=server.online if server else None, visibility=server.visibility if server else None,
        mrl=server.mrl if server else None,
        min_pricing=dict(server.min_pricing) if server else {},
        rates_id=_rates_id(session, rates, polled_at) if rates is not None else None)
    session.add(poll)
    session.flush()
    if offers:
        session.execute(insert(SpotOffer), [
            {"poll_id": poll.id, "offer_id": o.offer_id, "bid": o.bid, "active": o.active, "my": o.my}
            for o in offers])
    stated = [{"poll_id": poll.id, "offer_id": o.offer_id, "currency": o.currency}
              for o in offers if o.currency is not None]
    if stated:
        session.execute(insert(SpotOfferCurrency), stated)
    return poll.id


@dataclass(frozen=True, slots=True)
class MarketplaceResult:
    listing_id: int
    servers: int
    changed: int
    """Server entries written (new or changed)."""
    closed: int
    """Server entries ended (changed or gone from the listing)."""


_LISTED_VALUES = ("owner", "mrl", "rented", "gpu_model", "gpu_count", "country", "reliability",
                  "spot_floors", "on_demand", "specs")


def _listed_values(server: MarketplaceServer) -> tuple[Any, ...]:
    """A server's entry in ``_LISTED_VALUES`` order."""
    specs = server.specs
    gpu_count, gpu_model = parse_gpu_spec(specs.gpu if specs else None)
    price = server.price
    return (server.owner, server.mrl, server.rented, gpu_model, gpu_count,
            specs.net.cc if specs and specs.net else None, server.reliability,
            dict(price.spot or {}) if price else {}, dict(price.on_demand or {}) if price else {},
            specs.model_dump(mode="json", exclude_unset=True) if specs else None)


def record_marketplace(session: Session, taken_at: float, reply: MarketplaceReply) -> MarketplaceResult:
    """Record one ``marketplace`` listing. Listings must come in time order: an older one than the
    newest recorded is refused (``ValueError``), as it would end entries that came after it.
    On PostgreSQL this holds the listing lock until the caller's transaction ends."""
    _require_ok(reply, "marketplace")
    current = {}
    for server in reply.servers:
        if server.id in current:
            raise ValueError(f"marketplace reply lists server {server.id} twice")
        current[server.id] = _listed_values(server)
    serialise(session, MARKETPLACE_INGEST)  # before reading the newest listing and open entries
    newest = session.scalar(select(func.max(MarketplaceListing.taken_at)))
    if newest is not None and taken_at < newest:
        raise ValueError(f"marketplace listing taken at {taken_at} is older than the newest "
                         f"recorded one ({newest}); listings are recorded in time order only")
    listing = MarketplaceListing(taken_at=taken_at, servers=len(current),
                                 my_servers=list(reply.my_servers))
    session.add(listing)
    session.flush()
    t = ListedServer.__table__.c
    open_rows = {row[0]: (row[1], tuple(row[2:])) for row in session.execute(
        select(t.server_id, t.first_listing, *(t[name] for name in _LISTED_VALUES))
        .where(t.end_listing.is_(None)))}
    changes = diff_versions(open_rows, current, listing.id)
    for server_id, first in changes.closed:
        session.execute(update(ListedServer.__table__)
                        .where(t.server_id == server_id, t.first_listing == first)
                        .values(end_listing=listing.id))
    if changes.opened:
        session.execute(insert(ListedServer.__table__), [
            {"server_id": server_id, "first_listing": listing.id, **dict(zip(_LISTED_VALUES, values))}
            for server_id, values in changes.opened])
    return MarketplaceResult(listing.id, len(current), len(changes.opened), len(changes.closed))

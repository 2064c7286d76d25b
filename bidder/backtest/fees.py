"""The creation fee a backtest charges: what Clore reported, else the config, and always said.

A backtest that charges no creation fee hides churn: every order that lives past
``creation_fee_after`` costs one in the real market. ``get_gigaspot`` replies carry the fee per
currency (``creation_fees``), recorded with each snapshot; where the history has them they win
over ``[markets.gigaspot] creation_fee``. Spot has no such reply: its fee comes from the config.
Whatever the source, the fee and where it came from go into the report, with a warning when it is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bidder.config import Config, TargetConfig
from storage.models import GigaspotSnapshot


@dataclass(frozen=True, slots=True)
class CreationFee:
    market: str
    fee: float
    currency: str | None
    source: str
    """``recorded get_gigaspot`` or ``config``"""

    def describe(self) -> str:
        unit = f" {self.currency}" if self.currency else ""
        return f"{self.market} {self.fee:g}{unit} ({self.source})"


def recorded_creation_fees(session: Session, *, end: float | None = None) -> dict[str, float]:
    """Currency -> creation fee of the newest recorded ``get_gigaspot`` reply (at or before
    ``end``, the backtest's last tick) that gave one; empty when none did.

    A snapshot recorded without a reply (``bidder import`` of bare CDN files) or with a reply that
    gave no fee says nothing about the fee, so it is passed over: databases written before
    ``storage.models.NULLABLE_JSON`` hold the JSON text ``'null'`` there rather than SQL NULL,
    and a reply without ``creation_fees`` is stored as ``{}``."""
    query = select(GigaspotSnapshot.creation_fees) \
        .where(GigaspotSnapshot.creation_fees.is_not(None)) \
        .order_by(GigaspotSnapshot.time.desc())
    if end is not None:
        query = query.where(GigaspotSnapshot.time <= end)
    rows = session.scalars(query.execution_options(yield_per=1000))  # mostly the first row
    try:
        for fees in rows:
            found = _fees_of(fees)
            if found:
                return found
    finally:
        rows.close()  # a PostgreSQL server-side cursor, left half read
    return {}


def _fees_of(value: object) -> dict[str, float]:
    """The usable fees of one recorded ``creation_fees`` value (anything but a mapping: none)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}


def with_creation_fees(config: Config, targets: Sequence[TargetConfig],
                       recorded: dict[str, float]) -> tuple[Config, list[CreationFee]]:
    """``config`` with the recorded GigaSPOT creation fee where the history has one for the
    GigaSPOT targets' currency, and the fee each market of ``targets`` will be charged."""
    fees = []
    markets = config.markets
    for market in sorted({t.market for t in targets}):
        currencies = sorted({t.currency for t in targets if t.market == market})
        currency = currencies[0] if len(currencies) == 1 else None
        if market == "gigaspot" and currency is not None and currency in recorded:
            rules = markets.gigaspot.model_copy(update={"creation_fee": recorded[currency]})
            markets = markets.model_copy(update={"gigaspot": rules})
            fees.append(CreationFee(market, recorded[currency], currency, "recorded get_gigaspot"))
        else:
            fees.append(CreationFee(market, markets.rules(market).creation_fee,  # type: ignore[arg-type]
                                    currency, f"config [markets.{market}] creation_fee"))
    return config.model_copy(update={"markets": markets}), fees


def fee_warnings(fees: Sequence[CreationFee]) -> list[str]:
    """A line for each market charged no creation fee: its costs leave churn out."""
    return [f"warning: the {f.market} creation fee is 0 ({f.source}): costs leave out what "
            "each new order costs; set it if Clore charges one" for f in fees if f.fee == 0]

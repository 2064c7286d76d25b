"""Our open orders as ``bidder status`` reads them: plain SQL through ``storage.reader``.

The bot works on ORM rows (``bidder.orders.open_orders``); status reads the same rows without
SQLAlchemy. Which states are open and how an order's state reads to a strategy are defined here
once, for both; a test checks that both readings of one database agree, on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from storage.reader import Reader

if TYPE_CHECKING:
    from strategies.base import OrderState

OPEN_STATES = ("creating", "pending", "unknown", "live")
IN_FLIGHT_STATES = ("creating", "pending", "unknown")
"""An order whose id or last outcome is not known yet: only reconciliation changes it."""
APPEARED = "appeared"
"""The event of an order adopted while the bot ran that nothing of the bot placed (a person or
another bot uses the key): reconciliation keeps it unmanaged for good, oversight alerts
``foreign_order``, status shows it as not the bot's."""


class StoredState(Protocol):
    """What ``strategy_state`` reads of an order (a ``BotOrder`` or an ``OrderRow``)."""

    @property
    def state(self) -> str: ...

    @property
    def market_state(self) -> str | None: ...


def strategy_state(order: StoredState) -> OrderState:
    """The ``OwnOrder.state`` the strategy and the rules engine see."""
    if order.state in ("creating", "pending"):
        return "pending"
    if order.state == "unknown":
        return "unknown"
    if order.market_state in ("winning", "outbid"):
        return order.market_state  # type: ignore[return-value]
    return "pending"


@dataclass(frozen=True, slots=True)
class OrderRow:
    """The columns of a ``bot_order`` row status shows (names as in ``storage.models.BotOrder``)."""

    id: int
    order_id: int | None
    target: str | None
    market: str
    server_id: int
    gpus: int
    price: float
    currency: str
    state: str
    market_state: str | None
    created_at: float
    last_lowered_at: float | None
    told_next_lower_at: float | None
    adopted: bool
    dry_run: bool


COLUMNS = ", ".join(OrderRow.__dataclass_fields__)
OPEN_ORDERS_SQL = (f"SELECT {COLUMNS} FROM bot_order "
                   f"WHERE state IN ({', '.join('?' * len(OPEN_STATES))}) AND dry_run = ? "
                   "ORDER BY id")


def read_open_orders(reader: Reader, *, dry_run: bool) -> list[OrderRow]:
    """Our open orders (dry-run orders or real ones), oldest first: ``bidder.orders.open_orders``
    without the ORM."""
    return [OrderRow(int(r[0]), None if r[1] is None else int(r[1]), r[2], r[3], int(r[4]),
                     int(r[5]), float(r[6]), r[7], r[8], r[9], float(r[10]),
                     None if r[11] is None else float(r[11]),
                     None if r[12] is None else float(r[12]), bool(r[13]), bool(r[14]))
            for r in reader.rows(OPEN_ORDERS_SQL, (*OPEN_STATES, dry_run))]

"""Pydantic models of the Clore API's raw replies and request bodies.

Field names are the documented ones (``rest-api.md`` is the authority; ``gigaspot-market.txt`` for
the snapshot). Replies keep unknown extra fields (``extra="allow"``) so a new server field never
breaks the bot; request bodies forbid them so a typo never reaches the exchange.

Prices are **per server per day** in the named currency (``bitcoin``, ``CLORE-Blockchain``,
``USD-Blockchain``); GigaSPOT prices are CLORE per day.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from bidder.api.oc import OcSetting, Strict

Currency = str
"""A Clore currency name such as ``"CLORE-Blockchain"``; kept open because the API may add more."""

KNOWN_CURRENCIES: tuple[str, ...] = ("bitcoin", "CLORE-Blockchain", "USD-Blockchain")


class Reply(BaseModel):
    """Base of every JSON reply: ``code`` is always there; unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    code: int


class Lenient(BaseModel):
    """Base of nested reply objects: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- wallets -------------------------------------------------------------------------------------


class Wallet(Lenient):
    name: str
    deposit: str | None = None
    balance: float | None = None
    withdrawal_fee: float | None = None


class WalletsReply(Reply):
    wallets: list[Wallet] = Field(default_factory=list)


# --- marketplace ---------------------------------------------------------------------------------


class NetSpecs(Lenient):
    up: float | None = None
    down: float | None = None
    cc: str | None = None


class ServerSpecs(Lenient):
    mb: str | None = None
    cpu: str | None = None
    cpus: str | None = None
    ram: float | None = None
    disk: str | None = None
    disk_speed: float | None = None
    gpu: str | None = None
    """e.g. ``"1x NVIDIA GeForce GTX 1080 Ti"``: count and model in one string."""
    gpuram: float | None = None
    net: NetSpecs | None = None


class MarketplacePrice(Lenient):
    on_demand: dict[str, float] | None = None
    spot: dict[str, float] | None = None
    """Minimal spot price per day, by currency."""


class MarketplaceServer(Lenient):
    id: int
    owner: int | None = None
    mrl: int | None = None
    """Documented as hours here; other replies use seconds. Do not compute with it blindly."""
    price: MarketplacePrice | None = None
    rented: bool | None = None
    specs: ServerSpecs | None = None
    reliability: float | None = None


class MarketplaceReply(Reply):
    servers: list[MarketplaceServer] = Field(default_factory=list)
    my_servers: list[int] = Field(default_factory=list)


# --- my_orders -----------------------------------------------------------------------------------


class MyOrder(Lenient):
    id: int
    price: float | None = None
    currency: str | None = None
    spend: float | None = None
    ct: int | float | None = None
    """Creation time, UNIX seconds."""
    si: int | None = None
    """Server id."""
    spot: bool | None = None
    expired: bool | None = None
    fee: float | None = None
    creation_fee: float | None = None
    mrl: int | None = None
    image: str | None = None
    p: int | None = None
    specs: ServerSpecs | None = None
    pub_cluster: list[str] | str | None = None
    tcp_ports: list[str] | dict[str, Any] | None = None
    http_port: str | int | None = None


class MyOrdersReply(Reply):
    orders: list[MyOrder] = Field(default_factory=list)
    limit: int | None = None


# --- spot_marketplace ----------------------------------------------------------------------------


class SpotOffer(Lenient):
    offer_id: int
    """The order id used by ``set_spot_price`` and ``cancel_order``."""
    bid: float
    """Offered price per server-day in the server's currency."""
    active: bool
    """This offer currently runs (it holds the server)."""
    my: bool
    """This offer is ours."""
    currency: str | None = None
    """The offer's currency, when the reply states it (public clients typed from live replies
    show one); ``None``: unsaid, taken to be our order's currency."""


class SpotServer(Lenient):
    min_pricing: dict[str, float] = Field(default_factory=dict)
    """Floor price per day, by currency."""
    mrl: int | None = None
    visibility: str | None = None
    online: bool | None = None


class SpotMarket(Lenient):
    offers: list[SpotOffer] = Field(default_factory=list)
    server: SpotServer | None = None
    currency_rates_in_usd: dict[str, float] | None = None
    """Where public clients typed from live replies put the rates (the docs: at the top)."""


class SpotMarketplaceReply(Reply):
    market: SpotMarket | None = None
    exists: bool | None = None
    currency_rates_in_usd: dict[str, float] | None = None

    def rates_in_usd(self) -> dict[str, float] | None:
        """USD per unit of each currency, wherever the reply put them (the top level and
        ``market``; the top level wins where both name a currency)."""
        inner = self.market.currency_rates_in_usd if self.market is not None else None
        if inner is None:
            return self.currency_rates_in_usd
        return {**inner, **(self.currency_rates_in_usd or {})}


# --- GigaSPOT ------------------------------------------------------------------------------------


class GigaspotInfo(Reply):
    my_user_id: int
    v1_snapshot_url: str
    creation_fees: dict[str, float] = Field(default_factory=dict)
    clore_price: float | None = None
    """CLORE in USD."""


Range = Annotated[list[float], Field(min_length=2, max_length=2)]
Watts = Annotated[float, Field(ge=0)]
WattsRange = Annotated[list[Watts], Field(min_length=2, max_length=2)]


class SnapshotGpu(Lenient):
    pl: WattsRange
    """Allowed power limit range [min, max] in watts."""
    mem_lock: Range | None = None
    core_lock: Range | None = None
    mem_offset: Range | None = None
    core_offset: Range | None = None
    model: str


class SnapshotBid(Lenient):
    owner: int
    id: int
    active: bool
    to_cache: bool | None = None
    cached: bool | None = None
    price: float = Field(ge=0)
    currency: str
    pl: int | float = Field(ge=0)


class SnapshotMachine(Lenient):
    bids: list[SnapshotBid]
    on_demand_rented: bool
    online: bool
    cpu: str | None = None
    cores: int | None = None
    threads: int | None = None
    ram: float | None = None
    gpus: list[SnapshotGpu]
    working_properly: bool
    cuda: str | None = None
    max_rental_length: int
    """Seconds; 0 means the machine cannot be rented."""
    cc: str | None = None
    host: int | None = None
    reliability: float = Field(ge=0, le=1)
    """0..1, uptime over the last 14 days."""
    min_bid: float = Field(ge=0)
    """CLORE per day."""
    energy_price: float
    """USD per kWh."""


class Snapshot(RootModel[dict[str, SnapshotMachine]]):
    """The CDN snapshot: machine id (as a string) to machine."""

    @field_validator("root")
    @classmethod
    def _ids_are_integers(cls, v: dict[str, SnapshotMachine]) -> dict[str, SnapshotMachine]:
        for key in v:
            if not key.isdigit():
                raise ValueError(f"machine id {key!r} is not an integer")
        return v


class GigaspotCreateReply(Reply):
    failed_to_oc_servers: list[int] = Field(default_factory=list)
    failed_to_rent_servers: list[int] = Field(default_factory=list)
    too_low_bids_servers: list[int] = Field(default_factory=list)


class GigaspotEditReply(Reply):
    success_to_update_ids: list[int] = Field(default_factory=list)
    failed_to_update_ids: list[int] = Field(default_factory=list)
    too_low_bid_ids: list[int] = Field(default_factory=list)


class CancelOrdersReply(Reply):
    failed_to_cancel: list[int] = Field(default_factory=list)


# --- request bodies ------------------------------------------------------------------------------


# ``Strict`` (their base) and ``OcSetting`` live in ``bidder.api.oc``, imported above.


class SpotOrderRequest(Strict):
    currency: str
    image: str
    renting_server: int
    type: Literal["spot"] = "spot"
    spotprice: float = Field(gt=0)
    ports: dict[str, str] | None = None
    env: dict[str, str] | None = None
    jupyter_token: str | None = None
    ssh_key: str | None = None
    ssh_password: str | None = None
    command: str | None = None
    autossh_entrypoint: bool | None = None


class GigaspotOrderRequest(Strict):
    currency: str = "CLORE-Blockchain"
    image: str
    renting_server: int
    price: float = Field(ge=0.0001, le=5000)
    """CLORE per day."""
    oc: list[OcSetting]
    env: dict[str, str] | None = None


class GigaspotEditRequest(Strict):
    order_id: int
    price: float = Field(ge=0.0001, le=5000)
    oc: list[OcSetting] | None = None


def dump_body(model: BaseModel) -> dict[str, Any]:
    """A request body as the API expects it: documented names, unset optionals left out."""
    return model.model_dump(exclude_none=True)

"""The bot's configuration: one TOML file, validated at start.

Every table refuses unknown keys, so a typo is reported with its full path (``targets[0].gpu_modle``)
instead of being silently ignored. The API key comes from the config or from ``CLORE_API_KEY`` and
is held as a ``SecretStr``: printing the config, logging it or raising with it shows ``**********``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bidder.api.oc import OcSetting
# CLORE, ConfigError and Mode live in the light bidder.config_file (bidder status reads the database
# URL without pydantic); they are used and importable from here as before.
from bidder.config_file import CLORE, ConfigError, Mode, read_toml, resolved_data_dir, storage_url
from bidder.lowering import DEFAULT_COOLDOWN, DEFAULT_COOLDOWN_FROM_CREATION, DEFAULT_FEE_FRACTION

DEFAULT_BASE_URL = "https://api.clore.ai/v1"
API_KEY_ENV = "CLORE_API_KEY"

MarketName = Literal["spot", "gigaspot"]
AllocationRule = Literal["highest_price", "host_profit"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ApiConfig(Section):
    key: SecretStr | None = None
    """Prefer the ``CLORE_API_KEY`` environment variable; a key here wins over it."""
    base_url: str = DEFAULT_BASE_URL
    timeout: float = Field(30.0, gt=0)
    min_interval: float = Field(1.05, ge=1.0)
    """Seconds between two requests with this key. Published limit: 1 per second; the margin
    absorbs network jitter so requests never *arrive* closer than a second apart."""
    create_interval: float = Field(5.05, ge=5.0)
    """Seconds between two ``create_order`` calls. Published limit: one per 5 seconds."""
    max_retries: int = Field(4, ge=0, le=20)
    """Retries of read calls on transient faults and of any call refused by the rate limit."""

    def resolved_key(self, environ: dict[str, str] | None = None) -> SecretStr | None:
        """The key: this config's value, else ``CLORE_API_KEY``; ``None`` when neither is set."""
        if self.key is not None and self.key.get_secret_value():
            return self.key
        env = os.environ if environ is None else environ
        value = env.get(API_KEY_ENV, "")
        return SecretStr(value) if value else None


class StorageConfig(Section):
    url: str | None = None
    """SQLAlchemy URL. Default: a SQLite file in the data directory (``bidder.db``, or
    ``bidder-dry-run.db`` for dry runs)."""


class PollerConfig(Section):
    gigaspot_interval: float = Field(60.0, ge=5)
    """Seconds between ``get_gigaspot`` calls; the CDN file is fetched only when its URL changed."""
    spot_interval: float = Field(30.0, ge=1)
    """Seconds between rounds of ``spot_marketplace`` polls."""
    spot_polls_per_round: int = Field(10, ge=1)
    """At most this many ``spot_marketplace`` calls per round: our orders first, then candidates
    round robin."""
    marketplace_interval: float = Field(3600.0, ge=60)
    """Seconds between ``marketplace`` listings (spot discovery)."""


class MarketRules(Section):
    """The exchange's constraints for one market, as the rules engine applies them."""

    cooldown: float = Field(DEFAULT_COOLDOWN, ge=0)
    """Seconds between two lowerings of one order."""
    cooldown_from_creation: bool = DEFAULT_COOLDOWN_FROM_CREATION
    """Treat an order's creation as a lowering (safe while the exchange's rule is unknown)."""
    initial_step_fraction: float = Field(1.0, gt=0, le=1)
    """Until the exchange has told us an order's step (``exceeded_max_step``), one lowering goes at
    most this fraction below the current price. 1.0 probes: the first refusal teaches the step."""
    fee_fraction: float = Field(DEFAULT_FEE_FRACTION, ge=0, lt=1)
    """Fees on top of the price (spot: about 2.5 %)."""
    creation_fee: float = Field(0.0, ge=0)
    """One-time fee per order living past ``creation_fee_after`` seconds, in the order currency."""
    creation_fee_after: float = Field(600.0, ge=0)


class GigaspotRules(MarketRules):
    allocation: AllocationRule = "host_profit"
    """Who wins a GigaSPOT machine: the highest price, or the bid most profitable for the host."""


class MarketsConfig(Section):
    spot: MarketRules = Field(default_factory=MarketRules)
    gigaspot: GigaspotRules | None = None
    """Defaults to the spot rules (safe while GigaSPOT's own are unknown)."""

    @model_validator(mode="after")
    def _gigaspot_defaults_to_spot(self) -> MarketsConfig:
        if self.gigaspot is None:
            self.gigaspot = GigaspotRules(**self.spot.model_dump())
        return self

    def rules(self, market: MarketName) -> MarketRules:
        return self.spot if market == "spot" else self.gigaspot  # type: ignore[return-value]


class BudgetConfig(Section):
    max_per_day: float | None = Field(None, gt=0)
    """Total spend per day across all targets (all live bids counted as if winning)."""
    currency: str = "USD"
    """``USD`` (converted with the API's own rates) or an order currency."""


class BotConfig(Section):
    decide_interval: float = Field(30.0, ge=1)
    """Seconds between decide/execute cycles."""
    rebuy_block: float = Field(3600.0, ge=0)
    """Seconds after our own cancel on a server during which a target does not buy it again,
    unless nothing else can meet its count (0: no block). Every rebuy is a new creation fee and
    a new 600-s cooldown."""
    heartbeat_stale_after: float = Field(300.0, ge=10)
    """``bidder status`` exits non-zero when the last heartbeat is older than this."""
    misfire_grace_time: float = Field(30.0, ge=1)
    reconcile_interval: float = Field(300.0, ge=10)
    """Seconds between reconciliations of our orders with ``my_orders``."""
    create_slack: float = Field(120.0, ge=0)
    """Seconds a found order's creation time (``ct``) may lie before our send time (clock skew,
    ``ct`` rounded down) and still be taken for the order we created."""
    create_grace_seconds: float = Field(180.0, ge=0)
    """Seconds after its reply a create may go unfound before it is marked failed."""
    create_grace: int = Field(2, ge=1)
    """GigaSPOT snapshots taken after a create's reply that must not show it (and ``my_orders``
    neither) before it is marked failed: ``my_orders`` may not list GigaSPOT orders."""
    create_grace_max: float = Field(1800.0, ge=0)
    """Seconds after which an unfound GigaSPOT create is marked failed even when no snapshot
    newer than it was published."""
    lease_stale_after: float = Field(600.0, ge=60)
    """Seconds without a heartbeat after which another bot may take over this database's lease
    (the holder renews it every cycle); until then a second ``bidder run`` refuses to start."""
    failed_rent_block: float = Field(3600.0, ge=0)
    """Seconds to keep away from a GigaSPOT machine that failed to rent, or from a server whose
    order the exchange ended."""
    too_low_block: float = Field(300.0, ge=0)
    """Seconds to keep away from a server that refused a create as too low, and before lowering
    again an order whose GigaSPOT edit was too low."""


class AlertsConfig(Section):
    """Messages to people when something needs them, sent through Apprise."""

    urls: list[SecretStr] = Field(default_factory=list)
    """Apprise URLs (``tgram://``, ``discord://``, ``json://host/path``, ``mailto://`` ...); empty
    sends nothing. Held secret: they carry tokens."""
    repeat_after: float = Field(3600.0, gt=0)
    """Seconds of the bot's clock between reminders while one problem goes on (one alert per
    episode otherwise)."""
    capacity_grace: float = Field(600.0, ge=0)
    """Seconds a target may stay below its count before ``capacity_short`` is sent."""
    unresolved_after: float = Field(900.0, gt=0)
    """Seconds an order's outcome may stay unknown before ``order_unresolved`` is sent."""
    timeout: float = Field(10.0, gt=0)
    """Seconds each URL is given to connect and to answer (in the sender thread, never a cycle)."""

    @field_validator("urls")
    @classmethod
    def _known_schemes(cls, v: list[SecretStr]) -> list[SecretStr]:
        bad = [i for i, u in enumerate(v) if "://" not in u.get_secret_value()]
        if bad:
            raise ValueError(f"entries {bad} are not Apprise URLs (scheme://...)")
        return v


class MonitorConfig(Section):
    """Prometheus metrics, the health endpoint and the log summary of a running bot."""

    listen: str = ""
    """``host:port`` serving ``/metrics`` and ``/healthz`` (e.g. ``127.0.0.1:9108``); empty: off
    (the default, so a second bot, a dry run, a test or the demo never fight over a port)."""
    log_summary_interval: float = Field(900.0, gt=0)
    """Seconds of the bot's clock between the INFO summaries of routine market polls (each poll
    itself logs at DEBUG)."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v:
            host, sep, port = v.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"expected host:port such as 127.0.0.1:9108, got {v!r}")
        return v

    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or None when off (``[::1]`` loses its brackets)."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class TargetConfig(Section):
    """What to hold: the user's words, e.g. 4 x RTX 4090, reliability >= 0.95, <= 30 CLORE/GPU-day."""

    name: str = Field(min_length=1)
    market: MarketName
    gpu_model: str = ""
    """Case-insensitive substring of the GPU model; empty matches every model."""
    unit: Literal["gpus", "servers"] = "gpus"
    count: int = Field(ge=1)
    min_gpus_per_server: int = Field(1, ge=1)
    max_gpus_per_server: int | None = Field(None, ge=1)
    min_reliability: float = Field(0.0, ge=0, le=1)
    working_properly_only: bool = True
    countries: list[str] = Field(default_factory=list)
    """ISO 3166-1 alpha-2 codes; empty allows every country."""
    exclude_servers: list[int] = Field(default_factory=list)
    max_price_per_gpu_day: float = Field(gt=0)
    cap_currency: str | None = None
    """Currency of ``max_price_per_gpu_day``: ``USD`` or the order currency (the default)."""
    currency: str = CLORE
    """Order currency."""
    image: str = "cloreai/ubuntu22.04-cuda12"
    command: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ports: dict[str, str] = Field(default_factory=dict)
    """Spot only: port forwarding, e.g. ``{"22" = "tcp"}``."""
    ssh_key: SecretStr | None = None
    ssh_password: SecretStr | None = None
    jupyter_token: SecretStr | None = None
    oc: OcSetting | None = None
    """GigaSPOT only: applied to every GPU of the machine; ``pl`` (watts) is required and checked
    against the machine's ranges before sending."""
    strategy: str = "outbid"
    strategy_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("countries")
    @classmethod
    def _upper_countries(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if len(c) != 2 or not c.isalpha()]
        if bad:
            raise ValueError(f"not ISO 3166-1 alpha-2 country codes: {bad}")
        return [c.upper() for c in v]

    @model_validator(mode="after")
    def _market_specific(self) -> TargetConfig:
        if self.market == "gigaspot":
            if self.oc is None:
                raise ValueError("a gigaspot target needs [targets.oc] with pl (watts)")
            if self.ssh_key or self.ssh_password or self.ports:
                raise ValueError("ssh_key, ssh_password and ports apply to spot targets only")
        elif self.oc is not None:
            raise ValueError("oc applies to gigaspot targets only")
        if self.max_gpus_per_server is not None and self.max_gpus_per_server < self.min_gpus_per_server:
            raise ValueError("max_gpus_per_server is below min_gpus_per_server")
        if self.cap_currency is None:
            self.cap_currency = self.currency
        elif self.cap_currency not in ("USD", self.currency):
            raise ValueError(f"cap_currency must be 'USD' or the order currency {self.currency!r}")
        return self


class SimConfig(Section):
    """The built-in simulated market (``bidder run --sim``, ``bidder sim``)."""

    seed: int = 1
    speed: float = Field(60.0, gt=0)
    """Simulated seconds per real second."""
    spot_servers: int = Field(60, ge=0)
    gigaspot_machines: int = Field(200, ge=0)
    step_rule: str = "fraction:0.1"
    """``fraction:F`` (lowest allowed = price x (1 - F)) or ``absolute:X`` (price - X)."""
    allocation: AllocationRule = "host_profit"
    payment: Literal["pay_your_bid", "second_price"] = "pay_your_bid"
    agent_lifetime: float = Field(1800.0, gt=0)
    """Simulated seconds a competitor stays on average: short by default, so that a one-minute
    demo shows rivals leaving and the bot stepping its prices down after them."""
    faults: float = Field(0.0, ge=0, le=1)
    """Fraction of requests answered with an injected fault (HTTP 500/502/429, hangs, invalid
    JSON, code 1, lost replies of executed calls, bad snapshots); 0: none."""


class Config(Section):
    data_dir: Path | None = None
    """Where the default database lives. Default: ``$XDG_DATA_HOME/clore-bidder`` or
    ``~/.local/share/clore-bidder``."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    poller: PollerConfig = Field(default_factory=PollerConfig)
    markets: MarketsConfig = Field(default_factory=MarketsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    bot: BotConfig = Field(default_factory=BotConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    targets: list[TargetConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_target_names(self) -> Config:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {dupes}")
        return self

    def resolved_data_dir(self, environ: dict[str, str] | None = None) -> Path:
        return resolved_data_dir(self.data_dir, environ)

    def storage_url(self, mode: Mode = "live") -> str:
        """The database URL: ``[storage] url``, else a file in the data directory per mode
        (``bidder.db``, ``bidder-dry-run.db``, ``bidder-sim.db``), so a dry run or a simulation
        never mixes its orders with real ones. ``bidder status`` resolves it from the file alone
        through the same function (``bidder.config_file``)."""
        return storage_url(self.storage.url, self.data_dir, mode)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"  {path or '(top level)'}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document; raise ``ConfigError`` naming every wrong key or value."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    return parse_config(read_toml(path), str(Path(path)))

"""What kind of market to simulate: the exchange's rules, its size and how lively it is.

The rules the real exchange does not publish (how far one lowering may go, whether you pay your bid
or the second price, who wins a GigaSPOT machine) are options here, so the bot can be tested
against every plausible variant. Defaults follow ``SEMANTICS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bidder.allocation import RULES

PAYMENTS = ("pay_your_bid", "second_price")
OUTBID_POLICIES = ("wait", "terminate")
GIGASPOT_LISTINGS = ("spot", "not_spot", "hidden")


@dataclass(frozen=True)
class StepRule:
    """How far one lowering may go: ``fraction:F`` (to price x (1 - F)) or ``absolute:X``
    (to price - X)."""

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> StepRule:
        kind, sep, amount = text.partition(":")
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not sep or kind not in ("fraction", "absolute") or not value > 0:
            raise ValueError(f"step rule {text!r}: expected 'fraction:F' (0 < F <= 1) "
                             "or 'absolute:X' (X > 0)")
        if kind == "fraction" and value > 1:
            raise ValueError(f"step rule {text!r}: a fraction must be at most 1")
        return cls(kind, value)

    def lowest(self, price: float) -> float:
        """The lowest price one lowering from ``price`` may reach (before the floor applies)."""
        if self.kind == "fraction":
            return price * (1.0 - self.amount)
        return price - self.amount


@dataclass(frozen=True)
class LoweringRules:
    """The limits on lowering an order's price in one market."""

    cooldown: float
    from_creation: bool
    step: StepRule


@dataclass(frozen=True)
class SimOptions:
    seed: int = 1
    spot_servers: int = 60
    gigaspot_machines: int = 200
    step_rule: str = "fraction:0.1"
    """``fraction:F`` (lowest allowed = price x (1 - F)) or ``absolute:X`` (price - X)."""
    allocation: str = "host_profit"
    """GigaSPOT winner rule (``bidder.allocation``): ``highest_price`` or ``host_profit``."""
    payment: str = "pay_your_bid"
    """``pay_your_bid``, or ``second_price``: the winner pays the lowest price that would still have
    won (the runner-up's price under ``highest_price``), at least the floor."""
    api_key: str | None = None
    """``None``: any non-empty key is accepted, each key being its own user."""
    request_interval: float = 1.0
    """Seconds between two accepted requests of one key (all endpoints)."""
    create_interval: float = 5.0
    """Seconds between two accepted ``create_order`` calls of one key."""
    cooldown: float = 600.0
    """Seconds between two lowerings of one spot order."""
    cooldown_from_creation: bool = True
    """An order's creation counts as its first lowering."""
    outbid_policy: str = "wait"
    """Spot offers that lose their server ``wait`` for it, or ``terminate`` (shown as expired)."""
    gigaspot_limits_http_429: bool = False
    """Over-limit GigaSPOT calls answer HTTP 429 with ``Retry-After`` instead of code 5."""
    agents: bool = True
    """Competitors: static bidders, reactive outbidders, ratchet bots, revenue-capped miners."""
    world_events: bool = True
    """Servers going offline and back, on-demand rentals, the CLORE price drifting."""
    gigaspot_step_rule: str | None = None
    """GigaSPOT's step rule; ``None``: the spot rule (GigaSPOT's own is unknown)."""
    gigaspot_cooldown: float | None = None
    """GigaSPOT's lowering cooldown; ``None``: the spot cooldown."""
    spot_agents: int = 25
    """Competitors on the spot market at any time (on average)."""
    gigaspot_agents: int = 80
    """Competitors (mostly miners) on GigaSPOT at any time (on average)."""
    agent_lifetime: float = 8 * 3600.0
    """Mean seconds a competitor stays; arrivals keep the population steady."""
    warmup: float = 3600.0
    """Seconds the market runs before the clock's start time, so it starts settled."""
    clore_usd: float = 0.03
    """Starting CLORE price in USD (``clore_price``); drifts within 0.02..0.05 with world events."""
    btc_usd: float = 60_000.0
    fee_percent: float = 2.5
    """Fee on top of every order's spend (``fee`` in ``my_orders``)."""
    creation_fee_clore: float = 0.045
    """One-time fee per order that lives past ``creation_fee_after`` seconds (converted for other
    currencies)."""
    creation_fee_after: float = 600.0
    gigaspot_max_life: float = 20 * 86400.0
    snapshot_keep: int = 5
    """How many GigaSPOT snapshots the CDN keeps; older URLs answer 404."""
    snapshot_interval: float = 0.0
    """Least seconds between two published snapshots (0: a new one once the market changed)."""
    order_limit: int = 128
    """Most open orders per user (``limit`` in ``my_orders``)."""
    gigaspot_in_my_orders: str = "spot"
    """How ``my_orders`` lists GigaSPOT orders, which is not published: ``spot`` (``spot: true``),
    ``not_spot`` (``spot: false``, like an on-demand rental) or ``hidden`` (not at all: only the
    snapshot shows them)."""
    listing_rented_by_spot: bool = False
    """The marketplace listing says ``rented: true`` while a spot order runs on a server (the
    documented meaning is "rented on demand"; nothing guarantees it)."""
    faults: float = 0.0
    """Fraction of requests (0..1) answered with an injected fault (``bidder.sim.faults``)."""
    starting_balances: tuple[tuple[str, float], ...] = (
        ("bitcoin", 0.05), ("CLORE-Blockchain", 1_000_000.0), ("USD-Blockchain", 1_000.0))

    def __post_init__(self) -> None:
        StepRule.parse(self.step_rule)
        if self.gigaspot_step_rule is not None:
            StepRule.parse(self.gigaspot_step_rule)
        choices = {"allocation": RULES, "payment": PAYMENTS, "outbid_policy": OUTBID_POLICIES,
                   "gigaspot_in_my_orders": GIGASPOT_LISTINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {allowed}")
        if self.api_key == "":
            raise ValueError("api_key must be None (any key) or a non-empty key")
        for name in ("spot_servers", "gigaspot_machines", "spot_agents", "gigaspot_agents"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        positive = ("agent_lifetime", "clore_usd", "btc_usd", "snapshot_keep", "order_limit",
                    "gigaspot_max_life")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        non_negative = ("request_interval", "create_interval", "cooldown", "warmup", "fee_percent",
                        "creation_fee_clore", "creation_fee_after", "snapshot_interval")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.faults <= 1.0:
            raise ValueError(f"faults must be a fraction in 0..1, got {self.faults}")
        if self.gigaspot_cooldown is not None and not self.gigaspot_cooldown >= 0:
            raise ValueError(f"gigaspot_cooldown must be >= 0, got {self.gigaspot_cooldown}")

    @classmethod
    def quiet(cls, **changes: Any) -> SimOptions:
        """A market where nothing moves unless a test moves it: no competitors, no world events."""
        return cls(**{"agents": False, "world_events": False, **changes})

    def lowering(self, market: str) -> LoweringRules:
        """The lowering limits of ``"spot"`` or ``"gigaspot"`` (which defaults to the spot ones)."""
        if market == "gigaspot":
            cooldown = self.cooldown if self.gigaspot_cooldown is None else self.gigaspot_cooldown
            step = self.gigaspot_step_rule or self.step_rule
            return LoweringRules(cooldown, self.cooldown_from_creation, StepRule.parse(step))
        return LoweringRules(self.cooldown, self.cooldown_from_creation,
                             StepRule.parse(self.step_rule))

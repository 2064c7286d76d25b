"""The simulated exchange's HTTP face: Clore's paths, ``auth`` header, JSON shapes, codes, limits.

Checks run in the real API's order as far as it shows: an unknown endpoint is code 4, then a bad
key code 3, then the rate limit code 5 (or HTTP 429 on GigaSPOT calls when so configured), then the
input code 2 (with an ``error`` naming what was wrong, which the real API does not give but a
developer wants). Only requests that pass the limiter count as accepted.

The snapshot CDN lives under ``/cdn/`` on the same host; it needs no key and has no limit.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bidder.sim.exchange import (
    FAILED_TO_OC,
    FAILED_TO_RENT,
    GIGASPOT,
    OC_FIELDS,
    ON_DEMAND,
    SPOT,
    TOLERANCE,
    TOO_LOW_BID,
    Exchange,
    Order,
    Refused,
)
from bidder.sim.options import SimOptions
from bidder.sim.snapshot import SnapshotCdn
from bidder.sim.world import CLORE, Machine

JSON = dict[str, Any]
CDN_PREFIX = "/cdn/"
API_PREFIX = "/v1/"
MAX_CANCEL = 64
MAX_ISSUE = 2048
WITHDRAWAL_FEES = {"bitcoin": 0.0001, CLORE: 1.0, "USD-Blockchain": 1.0}
OPTIONAL_ORDER_FIELDS: dict[str, type] = {
    "ports": dict, "env": dict, "jupyter_token": str, "ssh_key": str, "ssh_password": str,
    "command": str, "required_price": float,
}


class BadInput(ValueError):
    """Code 2; the message names the field and what was wrong with it."""


@dataclass
class KeyStats:
    """What one key asked and what it was answered."""

    requests: Counter[str] = field(default_factory=Counter)
    """By endpoint name (unknown names included)."""
    codes: Counter[int] = field(default_factory=Counter)
    """By reply ``code`` (HTTP 429 replies count as code 5)."""
    errors: Counter[str] = field(default_factory=Counter)
    """By ``error`` string, for replies that carry one."""
    http_429: int = 0
    too_fast: list[tuple[str, float, str | None]] = field(default_factory=list)
    """Each request the rate limit refused: its endpoint, seconds since the key's last accepted
    request and that request's endpoint, so a report says what came too soon after what."""
    last_accepted: tuple[str, float] | None = None
    """The endpoint and time of the key's last request the rate limit let through."""


@dataclass
class CdnStats:
    fetches: int = 0
    not_found: int = 0
    with_auth_header: int = 0
    """Requests that carried an ``auth`` header: the key leaked to the CDN."""


@dataclass(frozen=True)
class Call:
    user: int
    now: float
    request: httpx.Request

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the request, so URLs in replies point at the same server."""
        return f"{self.request.url.scheme}://{self.request.url.netloc.decode()}"


@dataclass(frozen=True)
class Endpoint:
    handler: Callable[[Api, Call], JSON]
    gigaspot: bool = False
    """A GigaSPOT call: over the limit it may answer HTTP 429 instead of code 5."""
    create: bool = False
    """Subject to ``create_order``'s own interval."""


class RateLimiter:
    """One request per ``interval`` per user on every endpoint, ``create_order`` one per
    ``create_interval``, both measured from the last *accepted* request."""

    def __init__(self, interval: float, create_interval: float) -> None:
        self._interval = interval
        self._create_interval = create_interval
        self._last: dict[int, float] = {}
        self._last_create: dict[int, float] = {}

    def admit(self, user: int, create: bool, now: float) -> float:
        """0.0 when the request is accepted (and counted), else the seconds left to wait."""
        wait = self._interval - (now - self._last.get(user, -math.inf))
        if create:
            wait = max(wait, self._create_interval - (now - self._last_create.get(user, -math.inf)))
        if wait > TOLERANCE:
            return wait
        self._last[user] = now
        if create:
            self._last_create[user] = now
        return 0.0


class Api:
    def __init__(self, options: SimOptions, exchange: Exchange, cdn: SnapshotCdn) -> None:
        self.stats: dict[str, KeyStats] = {}
        self.cdn_stats = CdnStats()
        self._options = options
        self._exchange = exchange
        self._cdn = cdn
        self._users: dict[str, int] = {}
        self._limiter = RateLimiter(options.request_interval, options.create_interval)

    def user(self, key: str) -> int:
        """The user id of an API key (keys get ids 100, 101, ... in order of first use)."""
        return self._users.setdefault(key, 100 + len(self._users))

    def handle(self, request: httpx.Request, now: float) -> httpx.Response:
        path = request.url.path
        if path.startswith(CDN_PREFIX):
            return self._snapshot_file(request, path[len(CDN_PREFIX):])
        if not path.startswith(API_PREFIX):
            return httpx.Response(404, text="Not Found")
        name = path[len(API_PREFIX):]
        key = request.headers.get("auth", "")
        stats = self.stats.setdefault(key, KeyStats())
        stats.requests[name] += 1
        endpoint = ENDPOINTS.get(name)
        if endpoint is None:
            return _reply(stats, {"code": 4})
        if not key or (self._options.api_key is not None and key != self._options.api_key):
            return _reply(stats, {"code": 3})
        user = self.user(key)
        wait = self._limiter.admit(user, endpoint.create, now)
        if wait <= 0:
            stats.last_accepted = (name, now)
        else:
            last = stats.last_accepted
            stats.too_fast.append((name, now - last[1], last[0]) if last else (name, math.inf, None))
            if endpoint.gigaspot and self._options.gigaspot_limits_http_429:
                stats.http_429 += 1
                return _reply(stats, {"code": 5}, status=429,
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
            return _reply(stats, {"code": 5})
        try:
            body = endpoint.handler(self, Call(user, now, request))
        except BadInput as err:
            body = {"error": str(err), "code": 2}
        return _reply(stats, body)

    def _snapshot_file(self, request: httpx.Request, name: str) -> httpx.Response:
        self.cdn_stats.fetches += 1
        if "auth" in request.headers:
            self.cdn_stats.with_auth_header += 1
        data = self._cdn.file(name)
        if data is None:
            self.cdn_stats.not_found += 1
            return httpx.Response(404, text="Not Found")
        return httpx.Response(200, content=data, headers={"content-type": "application/json"})

    # --- endpoints -------------------------------------------------------------------------------

    def wallets(self, call: Call) -> JSON:
        self._exchange.settle(call.now)
        wallets = [{"name": currency, "deposit": f"sim-{currency.lower()}-{call.user}",
                    "balance": self._exchange.balance(call.user, currency, start, call.now),
                    "withdrawal_fee": WITHDRAWAL_FEES.get(currency, 0.0)}
                   for currency, start in self._options.starting_balances]
        return {"wallets": wallets, "code": 0}

    def marketplace(self, call: Call) -> JSON:
        listed = [s for s in self._exchange.world.servers.values()
                  if s.visibility == "public" and s.online]
        servers = [{"id": s.id, "owner": s.owner, "mrl": s.mrl_hours,
                    "price": {"on_demand": dict(s.on_demand), "spot": dict(s.floors)},
                    "rented": s.rented or (self._options.listing_rented_by_spot
                                           and self._exchange.holder(s.id) is not None),
                    "specs": s.specs, "reliability": s.reliability}
                   for s in listed]
        return {"servers": servers, "my_servers": [], "code": 0}

    def my_orders(self, call: Call) -> JSON:
        flag = call.request.url.params.get("return_completed", "false").lower()
        if flag not in ("true", "false", "1", "0"):
            raise BadInput(f"return_completed: expected true or false, got {flag!r}")
        completed = flag in ("true", "1")
        self._exchange.settle(call.now)
        hidden = self._options.gigaspot_in_my_orders == "hidden"
        orders = [self._order_json(o, call.now) for o in self._exchange.orders_of(call.user)
                  if (o.open or completed) and not (hidden and o.kind == GIGASPOT)]
        return {"orders": orders, "limit": self._options.order_limit, "code": 0}

    def spot_marketplace(self, call: Call) -> JSON:
        market = call.request.url.params.get("market")
        if market is None or not market.isdigit():
            raise BadInput(f"market: expected a server id, got {market!r}")
        rates = self._exchange.rates_usd()
        server = self._exchange.world.servers.get(int(market))
        if server is None:
            return {"exists": False, "currency_rates_in_usd": rates, "code": 0}
        holder = self._exchange.holder(server.id)
        offers = [{"offer_id": o.id, "bid": o.price, "active": o is holder,
                   "my": o.owner == call.user}
                  for o in self._exchange.book(server.id) if o.kind == SPOT]
        info = {"min_pricing": dict(server.floors), "mrl": server.mrl_hours * 3600,
                "visibility": server.visibility, "online": server.online}
        return {"market": {"offers": offers, "server": info}, "exists": True,
                "currency_rates_in_usd": rates, "code": 0}

    def create_order(self, call: Call) -> JSON:
        body = _object(call)
        currency = _field(body, "currency", str)
        image = _field(body, "image", str)
        server_id = _field(body, "renting_server", int)
        kind = _field(body, "type", str)
        for name, kind_of in OPTIONAL_ORDER_FIELDS.items():
            _field(body, name, kind_of, required=False)
        if kind not in (SPOT, ON_DEMAND):
            raise BadInput(f"type: expected 'spot' or 'on-demand', got {kind!r}")
        price = _positive(body, "spotprice") if kind == SPOT else 0.0
        result = self._exchange.create_order(call.user, server_id, kind, currency, image, call.now,
                                             price)
        return _refused(result) if isinstance(result, Refused) else {"code": 0}

    def set_spot_price(self, call: Call) -> JSON:
        body = _object(call)
        order_id = _field(body, "order_id", int)
        price = _positive(body, "desired_price")
        order = self._exchange.find(call.user, order_id)
        if order is None or order.kind != SPOT:
            return _refused(Refused("order_not_found"))
        refusal = self._exchange.reprice(order, price, call.now)
        return _refused(refusal) if refusal else {"code": 0}

    def cancel_order(self, call: Call) -> JSON:
        body = _object(call)
        order_id = _field(body, "id", int)
        issue = _field(body, "issue", str, required=False)
        if issue is not None and len(issue) > MAX_ISSUE:
            raise BadInput(f"issue: at most {MAX_ISSUE} characters")
        order = self._exchange.find(call.user, order_id)
        if order is None:
            return _refused(Refused("order_not_found"))
        self._exchange.cancel(order, call.now)
        return {"code": 0}

    def cancel_orders(self, call: Call) -> JSON:
        ids = _int_list(_field(_object(call), "order_ids", list), "order_ids")
        if len(ids) > MAX_CANCEL:
            raise BadInput(f"order_ids: at most {MAX_CANCEL} ids, got {len(ids)}")
        failed = []
        for order_id in ids:
            order = self._exchange.find(call.user, order_id)
            if order is None:
                failed.append(order_id)
            else:
                self._exchange.cancel(order, call.now)
        return {"failed_to_cancel": failed, "code": 0}

    def get_gigaspot(self, call: Call) -> JSON:
        name = self._cdn.latest(call.now)
        return {"my_user_id": call.user, "v1_snapshot_url": f"{call.origin}{CDN_PREFIX}{name}",
                "creation_fees": {CLORE: self._options.creation_fee_clore},
                "clore_price": self._exchange.clore_usd, "code": 0}

    def create_gigaspot_orders(self, call: Call) -> JSON:
        items = [(_field(item, "currency", str), _field(item, "image", str),
                  _field(item, "renting_server", int), _positive(item, "price"),
                  _oc(item, required=True), _field(item, "env", dict, required=False))
                 for item in _objects(call)]
        lists: dict[str, list[int]] = {FAILED_TO_OC: [], FAILED_TO_RENT: [], TOO_LOW_BID: []}
        for currency, image, machine_id, price, oc, _env in items:
            result = self._exchange.create_gigaspot(call.user, machine_id, currency, price, image,
                                                    oc, call.now)
            if isinstance(result, Refused):
                lists[result.error].append(machine_id)
        return {"failed_to_oc_servers": lists[FAILED_TO_OC],
                "failed_to_rent_servers": lists[FAILED_TO_RENT],
                "too_low_bids_servers": lists[TOO_LOW_BID], "code": 0}

    def edit_gigaspot_orders(self, call: Call) -> JSON:
        items = [(_field(item, "order_id", int), _positive(item, "price"),
                  _oc(item, required=False))
                 for item in _objects(call)]
        success, failed, too_low = [], [], []
        for order_id, price, oc in items:
            order = self._exchange.find(call.user, order_id)
            refusal = (Refused("order_not_found") if order is None or order.kind != GIGASPOT
                       else self._exchange.reprice(order, price, call.now, oc))
            if refusal is None:
                success.append(order_id)
            elif refusal.error == TOO_LOW_BID:
                too_low.append(order_id)
            else:
                failed.append(order_id)
        return {"success_to_update_ids": success, "failed_to_update_ids": failed,
                "too_low_bid_ids": too_low, "code": 0}

    def _order_json(self, order: Order, now: float) -> JSON:
        venue = self._exchange.world.venue(order.venue_id)
        if isinstance(venue, Machine):
            specs: JSON = {"cpu": venue.cpu, "cpus": f"{venue.cores}/{venue.threads}",
                           "ram": venue.ram, "gpu": f"{venue.gpus}x {venue.gpu.name}",
                           "gpuram": venue.gpu.vram, "net": {"cc": venue.cc}}
        else:
            assert venue is not None
            specs = venue.specs
        return {
            "id": order.id, "fee": self._options.fee_percent,
            "creation_fee": self._exchange.paid_creation_fee(order, now), "price": order.price,
            "mrl": round(order.expires - order.created), "image": order.image,
            "currency": order.currency, "spend": order.spend, "ct": int(order.created), "p": 1,
            "specs": specs, "si": order.venue_id, "pub_cluster": ["n1.c1.clorecloud.net"],
            "tcp_ports": [f"22:{10000 + order.id % 50000}"], "http_port": "8888",
            "spot": order.kind == SPOT or (order.kind == GIGASPOT
                                           and self._options.gigaspot_in_my_orders == "spot"),
            "expired": not order.open,
        }


ENDPOINTS: dict[str, Endpoint] = {
    "wallets": Endpoint(Api.wallets),
    "marketplace": Endpoint(Api.marketplace),
    "my_orders": Endpoint(Api.my_orders),
    "spot_marketplace": Endpoint(Api.spot_marketplace),
    "create_order": Endpoint(Api.create_order, create=True),
    "set_spot_price": Endpoint(Api.set_spot_price),
    "cancel_order": Endpoint(Api.cancel_order),
    "cancel_orders": Endpoint(Api.cancel_orders, gigaspot=True),
    "get_gigaspot": Endpoint(Api.get_gigaspot, gigaspot=True),
    "create_gigaspot_orders": Endpoint(Api.create_gigaspot_orders, gigaspot=True),
    "edit_gigaspot_orders": Endpoint(Api.edit_gigaspot_orders, gigaspot=True),
}


def _reply(stats: KeyStats, body: JSON, status: int = 200,
           headers: dict[str, str] | None = None) -> httpx.Response:
    stats.codes[body["code"]] += 1
    if "error" in body:
        stats.errors[body["error"]] += 1
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"content-type": "application/json", **(headers or {})})


def _refused(refusal: Refused) -> JSON:
    return {"error": refusal.error, **refusal.details, "code": 6}


# --- input ---------------------------------------------------------------------------------------


def _json(call: Call) -> Any:
    try:
        return json.loads(call.request.content or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the body is not valid JSON") from None


def _object(call: Call) -> JSON:
    body = _json(call)
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    return body


def _objects(call: Call) -> list[JSON]:
    body = _json(call)
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise BadInput("the body must be a JSON array of objects")
    return body


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


def _field(obj: JSON, name: str, kind: type, *, required: bool = True) -> Any:
    """``obj[name]`` checked to be a ``kind`` (``float`` takes integers; no boolean is a number)."""
    if name not in obj:
        if required:
            raise BadInput(f"{name}: missing")
        return None
    value = obj[name]
    numeric = kind in (int, float)
    ok = (isinstance(value, (int, float) if kind is float else kind)
          and not (numeric and isinstance(value, bool)))
    if not ok:
        raise BadInput(f"{name}: expected {_KIND_NAMES[kind]}, got {json.dumps(value)}")
    return float(value) if kind is float else value


def _positive(obj: JSON, name: str) -> float:
    value = _field(obj, name, float)
    if not (value > 0 and math.isfinite(value)):
        raise BadInput(f"{name}: expected a positive number, got {value}")
    return value


def _int_list(values: list[Any], name: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise BadInput(f"{name}: expected an array of integers")
    return values


def _oc(item: JSON, *, required: bool) -> list[dict[str, int]] | None:
    """GigaSPOT power settings: an object per GPU, integer ``pl`` required, the rest optional."""
    oc = _field(item, "oc", list, required=required)
    if oc is None:
        return None
    settings = []
    for gpu in oc:
        if not isinstance(gpu, dict):
            raise BadInput("oc: expected an array of objects")
        unknown = set(gpu) - set(OC_FIELDS)
        if unknown:
            raise BadInput(f"oc: unknown fields {sorted(unknown)}")
        values = {name: _field(gpu, name, int, required=name == "pl") for name in OC_FIELDS}
        settings.append({name: value for name, value in values.items() if value is not None})
    return settings

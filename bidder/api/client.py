"""The Clore API client: policy here, I/O in the transport (as httpx itself is designed).

The client owns the key header, the rate limiter, retries and the mapping of every failure to a
typed error; an ``httpx`` transport does the I/O, so tests and the simulated market plug in with
``httpx.MockTransport`` or ``httpx.WSGITransport``.

Reads repeat transient faults. Mutations are repeated only when the exchange refused them for the
rate limit (a refused request was not executed); one whose outcome is hidden (it may have been
executed) raises ``OutcomeUnknown`` at once, so the caller reconciles with the exchange instead of
creating a second order by accident, and one that certainly never left raises ``RequestNotSent``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from bidder import __version__
from bidder.api.errors import (
    ApiError,
    CloreError,
    ConnectionFailed,
    HttpError,
    InvalidReply,
    MissingApiKey,
    OutcomeUnknown,
    RateLimited,
    RequestNotSent,
    RequestTimeout,
    SnapshotNotFound,
    api_error,
)
from bidder.api.models import (
    CancelOrdersReply,
    GigaspotCreateReply,
    GigaspotEditReply,
    GigaspotEditRequest,
    GigaspotInfo,
    GigaspotOrderRequest,
    MarketplaceReply,
    MyOrdersReply,
    Reply,
    SpotMarketplaceReply,
    SpotOrderRequest,
    WalletsReply,
    dump_body,
)
from bidder.api.ratelimit import FileLimiterState, Priority, RateLimiter, clore_rate_limits
from bidder.clock import Clock
from bidder.logs import REDACTED

if TYPE_CHECKING:
    from bidder.config import ApiConfig

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.clore.ai/v1"
CANCEL_BATCH = 64
"""``cancel_orders`` takes at most this many ids per request."""
ISSUE_MAX_CHARS = 2048
RETRY_BASE = 1.0
"""Seconds; the n-th retry waits ``RETRY_BASE * 2**n`` (2, 4, 8, 16 ...) unless told otherwise."""
RETRY_CAP = 60.0
_EXCERPT_CHARS = 160

Outcome = Literal[
    "ok",
    "api_error",
    "rate_limited",
    "http_error",
    "timeout",
    "connection_error",
    "invalid_reply",
    "not_sent",
    "unknown",
]


@dataclass(frozen=True)
class CallEvent:
    """One attempt of one call, for the bot's record (``bidder status``). Never holds the key."""

    endpoint: str
    method: str
    priority: Priority
    started_at: float
    """When the request went out (after any wait for the rate limiter)."""
    finished_at: float
    attempt: int
    """1 for the first try, 2 for the first retry, ..."""
    outcome: Outcome
    """``unknown``: a mutating call whose outcome is hidden (reconcile before retrying)."""
    code: int | None = None
    """The API's ``code`` (0 when ok); ``None`` when no API reply was read."""
    error: str | None = None
    """The API's ``error`` string, or a one-line description of the fault."""
    http_status: int | None = None
    cdn: bool = False
    """A snapshot download from the CDN (not counted against the API limits)."""


@dataclass(frozen=True)
class _Endpoint:
    name: str
    method: Literal["GET", "POST"]
    priority: Priority
    mutating: bool = False
    cdn: bool = False


WALLETS = _Endpoint("wallets", "GET", Priority.POLL)
MARKETPLACE = _Endpoint("marketplace", "GET", Priority.POLL)
MY_ORDERS = _Endpoint("my_orders", "GET", Priority.RECONCILE)
SPOT_MARKETPLACE = _Endpoint("spot_marketplace", "GET", Priority.POLL)
GET_GIGASPOT = _Endpoint("get_gigaspot", "GET", Priority.POLL)
SNAPSHOT = _Endpoint("snapshot", "GET", Priority.POLL, cdn=True)
CREATE_ORDER = _Endpoint("create_order", "POST", Priority.CREATE, mutating=True)
SET_SPOT_PRICE = _Endpoint("set_spot_price", "POST", Priority.EDIT, mutating=True)
CANCEL_ORDER = _Endpoint("cancel_order", "POST", Priority.CANCEL, mutating=True)
CANCEL_ORDERS = _Endpoint("cancel_orders", "POST", Priority.CANCEL, mutating=True)
CREATE_GIGASPOT = _Endpoint("create_gigaspot_orders", "POST", Priority.CREATE, mutating=True)
EDIT_GIGASPOT = _Endpoint("edit_gigaspot_orders", "POST", Priority.EDIT, mutating=True)


class _KeyAuth(httpx.Auth):
    """Adds ``auth: <key>`` (Clore's header, not Bearer) to API requests; the CDN gets none."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["auth"] = self._key.get_secret_value()
        yield request


def _checked_key(api_key: SecretStr | str | None) -> SecretStr | None:
    """The key without surrounding whitespace; refuses one that cannot be an HTTP header value
    (rather than let the HTTP library quote it in an error message)."""
    if api_key is None:
        return None
    value = (api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key).strip()
    if not value:
        return None
    if not all(33 <= ord(c) < 127 for c in value):
        raise ValueError("the API key contains spaces or characters not allowed in an HTTP header")
    return SecretStr(value)


class CloreClient:
    """A synchronous, thread-safe client of the Clore API and the GigaSPOT snapshot CDN.

    Share one ``RateLimiter`` between every client using the same key (``from_config`` with a
    ``state_dir`` shares it with other processes too).
    """

    def __init__(
        self,
        api_key: SecretStr | str | None,
        *,
        clock: Clock,
        base_url: str = DEFAULT_BASE_URL,
        transport: httpx.BaseTransport | None = None,
        cdn_transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        observer: Callable[[CallEvent], None] | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self._key = _checked_key(api_key)
        self._clock = clock
        self._limiter = limiter if limiter is not None else RateLimiter(clock, clore_rate_limits())
        self._max_retries = max_retries
        self._in_flight_hold = timeout
        """How long a call's rate-limit slot is held while it is in flight (``RateLimiter``)."""
        self._observer = observer
        self.base_url = base_url
        headers = {"User-Agent": f"clore-bidder/{__version__}"}
        self._api = httpx.Client(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            headers=headers,
            auth=_KeyAuth(self._key) if self._key else None,
            follow_redirects=False,  # a redirect would carry the key elsewhere
        )
        self._cdn = httpx.Client(
            transport=cdn_transport, timeout=timeout, headers=headers, follow_redirects=True
        )

    @classmethod
    def from_config(
        cls,
        api: ApiConfig,
        *,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        cdn_transport: httpx.BaseTransport | None = None,
        limiter: RateLimiter | None = None,
        observer: Callable[[CallEvent], None] | None = None,
        environ: dict[str, str] | None = None,
        state_dir: str | Path | None = None,
    ) -> CloreClient:
        """A client for ``[api]``; the key is the config's, else ``CLORE_API_KEY``.

        Without a ``limiter``, one is built from the config's intervals; with ``state_dir`` its
        state is a file there shared by every process using the key.
        """
        key = _checked_key(api.resolved_key(environ))
        if limiter is None:
            state = None
            if state_dir is not None and key is not None:
                state = FileLimiterState.for_key(state_dir, key.get_secret_value())
            limits = clore_rate_limits(api.min_interval, api.create_interval)
            limiter = RateLimiter(clock, limits, state=state)
        elif state_dir is not None:
            raise ValueError("give from_config a limiter or a state_dir, not both")
        return cls(
            key,
            clock=clock,
            base_url=api.base_url,
            transport=transport,
            cdn_transport=cdn_transport,
            limiter=limiter,
            timeout=api.timeout,
            max_retries=api.max_retries,
            observer=observer,
        )

    @property
    def has_key(self) -> bool:
        return self._key is not None

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    def __repr__(self) -> str:
        return f"CloreClient(base_url={self.base_url!r}, key={'set' if self._key else 'missing'})"

    def close(self) -> None:
        self._api.close()
        self._cdn.close()

    def __enter__(self) -> CloreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reads ------------------------------------------------------------------------------------

    def wallets(self) -> WalletsReply:
        return self._call(WALLETS, WalletsReply)

    def marketplace(self) -> MarketplaceReply:
        return self._call(MARKETPLACE, MarketplaceReply)

    def my_orders(self, return_completed: bool = False) -> MyOrdersReply:
        params = {"return_completed": "true"} if return_completed else None
        return self._call(MY_ORDERS, MyOrdersReply, params=params)

    def spot_marketplace(self, server_id: int) -> SpotMarketplaceReply:
        return self._call(SPOT_MARKETPLACE, SpotMarketplaceReply, params={"market": server_id})

    def get_gigaspot(self) -> GigaspotInfo:
        return self._call(GET_GIGASPOT, GigaspotInfo)

    def fetch_snapshot(self, url: str) -> bytes:
        """Download the GigaSPOT snapshot: never with the key, not counted by the limiter."""
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"snapshot URL must be an absolute http(s) URL, got {url!r}")

        def interpret(response: httpx.Response) -> bytes:
            self._raise_on_429(SNAPSHOT, response)
            if response.status_code == 404:
                raise SnapshotNotFound(SNAPSHOT.name, url)
            if not response.is_success:
                raise HttpError(SNAPSHOT.name, response.status_code, self._excerpt(response))
            return response.content

        return self._attempts(SNAPSHOT, lambda: self._cdn.get(url), interpret)

    # --- mutations --------------------------------------------------------------------------------

    def create_spot_order(self, order: SpotOrderRequest) -> None:
        """Place a spot offer. The reply has no order id: find the order with ``my_orders``."""
        self._call(CREATE_ORDER, Reply, body=dump_body(order))

    def set_spot_price(self, order_id: int, price: float) -> None:
        """Raise or lower a spot offer (per day).

        Refusals to lower: ``ExceededMaxStep`` (too far), ``LoweringTooSoon`` (too early).
        """
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"set_spot_price: price must be a positive number, got {price!r}")
        self._call(SET_SPOT_PRICE, Reply, body={"order_id": order_id, "desired_price": price})

    def cancel_order(self, order_id: int, issue: str | None = None) -> None:
        """Cancel one order; ``issue`` reports a problem with the server to Clore."""
        body: dict[str, Any] = {"id": order_id}
        if issue is not None:
            if len(issue) > ISSUE_MAX_CHARS:
                raise ValueError(
                    f"cancel_order: issue is {len(issue)} characters, at most {ISSUE_MAX_CHARS}"
                )
            body["issue"] = issue
        self._call(CANCEL_ORDER, Reply, body=body)

    def cancel_orders(self, order_ids: Sequence[int]) -> CancelOrdersReply:
        """Cancel many orders of any type, 64 per request, in order; an empty list sends nothing.

        If a batch fails, the error's note says which earlier batches were done; later ones were
        not sent.
        """
        ids = list(order_ids)
        replies: list[CancelOrdersReply] = []
        for start in range(0, len(ids), CANCEL_BATCH):
            batch = ids[start : start + CANCEL_BATCH]
            try:
                body = {"order_ids": batch}
                replies.append(self._call(CANCEL_ORDERS, CancelOrdersReply, body=body))
            except CloreError as err:
                if start:
                    failed = [i for r in replies for i in r.failed_to_cancel]
                    err.add_note(
                        f"the first {start} ids were sent in earlier batches (failed to cancel: "
                        f"{failed}); the last {len(ids) - start - len(batch)} were not sent"
                    )
                raise
        return _merge(replies, CancelOrdersReply)

    def create_gigaspot_orders(self, orders: Sequence[GigaspotOrderRequest]) -> GigaspotCreateReply:
        """Bid on GigaSPOT machines (one request). No order ids come back: find them in the next
        snapshot (``owner == my_user_id``) or in ``my_orders``. An empty list sends nothing."""
        if not orders:
            return GigaspotCreateReply(code=0)
        return self._call(CREATE_GIGASPOT, GigaspotCreateReply, body=[dump_body(o) for o in orders])

    def edit_gigaspot_orders(self, edits: Sequence[GigaspotEditRequest]) -> GigaspotEditReply:
        """Change GigaSPOT bids (one request). An empty list sends nothing."""
        if not edits:
            return GigaspotEditReply(code=0)
        return self._call(EDIT_GIGASPOT, GigaspotEditReply, body=[dump_body(e) for e in edits])

    # --- policy -----------------------------------------------------------------------------------

    def _call(
        self,
        ep: _Endpoint,
        model: type[R],
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> R:
        if self._key is None:
            raise MissingApiKey(ep.name)

        def send() -> httpx.Response:
            return self._api.request(ep.method, ep.name, params=params, json=body)

        return self._attempts(ep, send, lambda response: self._api_reply(ep, response, model))

    def _attempts(
        self,
        ep: _Endpoint,
        send: Callable[[], httpx.Response],
        interpret: Callable[[httpx.Response], T],
    ) -> T:
        """Send until a result, a final error, or the retries are spent; one event per attempt."""
        attempt = 0
        while True:
            attempt += 1
            held = None if ep.cdn else \
                self._limiter.acquire(ep.name, ep.priority, hold=self._in_flight_hold)
            started = self._clock.now()
            response: httpx.Response | None = None
            try:
                try:
                    response = send()
                except httpx.TimeoutException as exc:
                    if held is not None:
                        self._limiter.done(ep.name, held, self._slot_end(exc))
                    raise
                except BaseException:
                    if held is not None:
                        self._limiter.done(ep.name, held, self._clock.now())
                    raise
                if held is not None:  # the exchange saw it by now: the next call counts from here
                    self._limiter.done(ep.name, held, self._clock.now())
                result = interpret(response)
            except httpx.RequestError as exc:  # converted, not chained: it holds the headers
                fault = self._transport_fault(ep.name, exc)
            except CloreError as exc:
                fault = exc
            else:
                self._emit(ep, attempt, started, "ok", response, None)
                return result

            not_sent = isinstance(fault, RequestNotSent)
            hides_outcome = ep.mutating and fault.transient and not not_sent
            outcome = "unknown" if hides_outcome else fault.kind
            self._emit(ep, attempt, started, cast(Outcome, outcome), response, fault)
            final = attempt > self._max_retries
            if isinstance(fault, RateLimited):
                delay = fault.retry_after if fault.retry_after is not None else self._delay(attempt)
                if not ep.cdn:
                    self._limiter.backoff(delay)  # every user of the key waits, even if we give up
                if not final:
                    log.warning("%s: rate limited; trying again in %.1f s", ep.name, delay)
                    if ep.cdn:
                        self._clock.sleep(delay)
                    continue
            if hides_outcome:
                raise OutcomeUnknown(ep.name, fault) from fault
            if fault.transient and not final and not ep.mutating:
                delay = self._delay(attempt)
                log.warning("%s: %s; retrying in %.1f s", ep.name, fault.message, delay)
                self._clock.sleep(delay)
                continue
            if attempt > 1:
                fault.add_note(f"gave up after {attempt} attempts")
            raise fault

    @staticmethod
    def _delay(attempt: int) -> float:
        return min(RETRY_CAP, RETRY_BASE * 2**attempt)

    def _api_reply(self, ep: _Endpoint, response: httpx.Response, model: type[R]) -> R:
        self._raise_on_429(ep, response)
        body = _json_object(response)
        code = None if body is None else body.get("code")
        if body is not None and type(code) is int and code != 0:
            raise api_error(ep.name, body, retry_after=self._retry_after(response))
        if not response.is_success:
            raise HttpError(ep.name, response.status_code, self._excerpt(response))
        if body is None:
            raise InvalidReply(ep.name, f"not a JSON object: {self._excerpt(response)}")
        if type(code) is not int:
            raise InvalidReply(ep.name, f"no integer code: {self._excerpt(response)}")
        try:
            return model.model_validate(body)
        except ValidationError as err:
            problem = f"does not match {model.__name__}: {_summary(err)}"
            raise InvalidReply(ep.name, problem) from err

    def _raise_on_429(self, ep: _Endpoint, response: httpx.Response) -> None:
        if response.status_code == 429:
            reply = _json_object(response) or {}
            retry_after = self._retry_after(response)
            raise RateLimited(ep.name, reply, retry_after=retry_after, http_status=429)

    def _retry_after(self, response: httpx.Response) -> float | None:
        """``Retry-After`` in seconds from now (it may be seconds or an HTTP date)."""
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - self._clock.now()
            except (TypeError, ValueError):
                return None
        return max(0.0, seconds) if math.isfinite(seconds) else None

    def _slot_end(self, exc: httpx.TimeoutException) -> float:
        """When a call that timed out stops counting against the rate limit. One that never
        left (no connection) ends now. One sent without a reply may still be on its way: the
        exchange counts a request when it arrives, and nothing bounds when that is, so its slot
        stays held for another request timeout (the next call waits up to that long, which a
        timing-out exchange should get anyway), rather than letting the next call arrive right
        behind it."""
        now = self._clock.now()
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return now
        return now + self._in_flight_hold

    def _transport_fault(self, endpoint: str, exc: httpx.RequestError) -> CloreError:
        detail = self._redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return RequestNotSent(endpoint, f"not sent ({detail})")
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeout(endpoint, f"timed out ({detail})")
        if isinstance(exc, httpx.DecodingError):
            return InvalidReply(endpoint, f"undecodable body ({detail})")
        return ConnectionFailed(endpoint, f"connection failed ({detail})")

    def _excerpt(self, response: httpx.Response) -> str:
        text = self._redact(" ".join(response.text.split()))
        return text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "") or "empty body"

    def _redact(self, text: str) -> str:
        """Server and library text put into errors, with the key blanked should it ever appear."""
        return text.replace(self._key.get_secret_value(), REDACTED) if self._key else text

    def _emit(
        self,
        ep: _Endpoint,
        attempt: int,
        started: float,
        outcome: Outcome,
        response: httpx.Response | None,
        fault: CloreError | None,
    ) -> None:
        if isinstance(fault, ApiError):
            code, error = fault.code, fault.error
        else:
            code = 0 if fault is None and not ep.cdn else None
            error = fault.message if fault is not None else None
        event = CallEvent(
            endpoint=ep.name,
            method=ep.method,
            priority=ep.priority,
            started_at=started,
            finished_at=self._clock.now(),
            attempt=attempt,
            outcome=outcome,
            code=code,
            error=error,
            http_status=response.status_code if response is not None else None,
            cdn=ep.cdn,
        )
        log.debug("%s %s attempt %d: %s", ep.method, ep.name, attempt, outcome)
        if self._observer is not None:
            try:
                self._observer(event)
            except Exception:  # a broken recorder must not turn a done call into a failed one
                log.exception("call observer failed on %s", event)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _summary(err: ValidationError) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors()]
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _merge(replies: list[R], model: type[R]) -> R:
    """One reply from several batches: list fields concatenated, other fields from the last."""
    merged: dict[str, Any] = {"code": 0}
    for reply in replies:
        for name, value in reply.model_dump().items():
            merged[name] = merged.get(name, []) + value if isinstance(value, list) else value
    return model.model_validate(merged)

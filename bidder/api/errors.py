"""Every error the Clore client raises: one hierarchy, each naming the endpoint that failed.

Three questions decide what a caller does with an error, so each class answers them:

- *What did the exchange say?* ``ApiError`` and its per-code subclasses carry the reply.
- *Could repeating the call help?* ``transient`` (timeouts, dropped connections, HTTP 5xx, code 1,
  unreadable replies). The client repeats transient reads itself.
- *Did a mutation happen?* ``RequestNotSent`` means certainly not (safe to retry);
  ``OutcomeUnknown`` means maybe: reconcile with the exchange before anything is retried.

No message is ever built from request headers, so the API key cannot reach a traceback.
"""

from __future__ import annotations

from typing import Any

CODE_MEANINGS: dict[int, str] = {
    0: "normal",
    1: "database error",
    2: "invalid input data",
    3: "invalid API token",
    4: "invalid endpoint",
    5: "exceeded the rate limit",
    6: "see the error field",
}
"""The documented ``code`` values of every reply."""


class CloreError(Exception):
    """Base of every client error; ``endpoint`` names the failed call (e.g. ``create_order``)."""

    kind = "error"
    """The outcome reported to observers for an attempt that failed this way."""
    transient = False
    """Repeating the same call may succeed."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.message = message


class MissingApiKey(CloreError):
    """No key was configured; nothing was sent."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint, "no API key: set CLORE_API_KEY or [api] key in the config")


# --- the exchange answered with a non-zero code --------------------------------------------------


class ApiError(CloreError):
    """The API answered with a non-zero ``code``; ``reply`` is the whole answer (it has an int
    ``code``)."""

    kind = "api_error"

    def __init__(self, endpoint: str, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code: int = reply["code"]
        error = reply.get("error")
        self.error: str | None = error if isinstance(error, str) else None
        meaning = CODE_MEANINGS.get(self.code, "unknown code")
        detail = f": {self.error}" if self.error else ""
        super().__init__(endpoint, f"code {self.code} ({meaning}){detail}")


class DatabaseError(ApiError):
    """Code 1. Transient; on a mutation the outcome is unknown."""

    transient = True


class InvalidInput(ApiError):
    """Code 2: the exchange refused the request's data."""


class InvalidToken(ApiError):
    """Code 3: the key is wrong or revoked."""


class InvalidEndpoint(ApiError):
    """Code 4."""


class RateLimited(ApiError):
    """Code 5 or HTTP 429: refused, not executed. ``retry_after`` is the server's wish, if given."""

    kind = "rate_limited"

    def __init__(
        self,
        endpoint: str,
        reply: dict[str, Any],
        *,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(endpoint, {**reply, "code": 5})  # an HTTP 429 means the same as code 5
        self.retry_after = retry_after
        self.http_status = http_status


class FieldError(ApiError):
    """Code 6: the ``error`` field says what was wrong."""


class ExceededMaxStep(FieldError):
    """A spot price lowering went too far; ``max_step`` is the lowest price allowed right now."""

    def __init__(self, endpoint: str, reply: dict[str, Any], max_step: float) -> None:
        super().__init__(endpoint, reply)
        self.max_step = max_step


class LoweringTooSoon(FieldError):
    """A spot price was lowered within 600 s of the last lowering; wait ``time_to_lowering`` s."""

    def __init__(self, endpoint: str, reply: dict[str, Any], time_to_lowering: float) -> None:
        super().__init__(endpoint, reply)
        self.time_to_lowering = time_to_lowering


_BY_CODE: dict[int, type[ApiError]] = {
    1: DatabaseError,
    2: InvalidInput,
    3: InvalidToken,
    4: InvalidEndpoint,
    6: FieldError,
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def api_error(
    endpoint: str, reply: dict[str, Any], *, retry_after: float | None = None
) -> ApiError:
    """The typed error for a reply whose int ``code`` is not 0 (a plain ``ApiError`` if unknown)."""
    code = reply["code"]
    if code == 5:
        return RateLimited(endpoint, reply, retry_after=retry_after)
    if code == 6:
        error = reply.get("error")
        max_step = _number(reply.get("max_step"))
        if error == "exceeded_max_step" and max_step is not None:
            return ExceededMaxStep(endpoint, reply, max_step)
        time_to_lowering = _number(reply.get("time_to_lowering"))
        if error == "can_lower_every_600_seconds" and time_to_lowering is not None:
            return LoweringTooSoon(endpoint, reply, time_to_lowering)
    return _BY_CODE.get(code, ApiError)(endpoint, reply)


# --- the exchange did not answer usefully --------------------------------------------------------


class HttpError(CloreError):
    """A non-2xx HTTP status without an API ``code``. 5xx is transient; 4xx is not."""

    kind = "http_error"

    def __init__(self, endpoint: str, status: int, detail: str = "") -> None:
        self.status = status
        self.transient = status >= 500
        super().__init__(endpoint, f"HTTP {status}{': ' + detail if detail else ''}")


class SnapshotNotFound(HttpError):
    """The snapshot URL answered 404 (the file was replaced: ask ``get_gigaspot`` again)."""

    def __init__(self, endpoint: str, url: str) -> None:
        super().__init__(endpoint, 404, f"snapshot not found at {url}")
        self.url = url


class RequestTimeout(CloreError):
    """The request was sent (at least partly) and no full answer came in time."""

    kind = "timeout"
    transient = True


class ConnectionFailed(CloreError):
    """The connection broke after the request started going out."""

    kind = "connection_error"
    transient = True


class InvalidReply(CloreError):
    """The answer was not JSON, or did not match the documented reply."""

    kind = "invalid_reply"
    transient = True


class RequestNotSent(CloreError):
    """The request certainly never left (connect error, connect or pool timeout): safe to retry."""

    kind = "not_sent"
    transient = True


class OutcomeUnknown(CloreError):
    """A mutating call may or may not have been executed: reconcile before retrying it.

    ``cause`` is the fault that hid the outcome (a timeout, a dropped connection, HTTP 5xx, an
    unreadable reply or code 1).
    """

    kind = "unknown"

    def __init__(self, endpoint: str, cause: CloreError) -> None:
        super().__init__(endpoint, f"outcome unknown, reconcile before retrying ({cause.message})")
        self.cause = cause

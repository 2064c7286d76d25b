"""The Clore API client, its rate limiter and its errors.

``CloreClient`` speaks to the REST API and the GigaSPOT snapshot CDN; ``RateLimiter`` keeps every
user of a key within the published limits; ``bidder.api.errors`` says what went wrong and whether a
mutation may have happened. Reply and request models live in ``bidder.api.models``.

The names below are imported on first use (PEP 562): ``bidder.config`` needs only the request
models, and importing the client would pull httpx into every command, ``bidder status`` included.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bidder.api.client import DEFAULT_BASE_URL, CallEvent, CloreClient, Outcome
    from bidder.api.errors import (
        ApiError,
        CloreError,
        ConnectionFailed,
        DatabaseError,
        ExceededMaxStep,
        FieldError,
        HttpError,
        InvalidEndpoint,
        InvalidInput,
        InvalidReply,
        InvalidToken,
        LoweringTooSoon,
        MissingApiKey,
        OutcomeUnknown,
        RateLimited,
        RequestNotSent,
        RequestTimeout,
        SnapshotNotFound,
    )
    from bidder.api.ratelimit import (
        FileLimiterState,
        LimiterSnapshot,
        MemoryLimiterState,
        Priority,
        RateLimit,
        RateLimiter,
        RateLimits,
        clore_rate_limits,
    )

_HOME = {
    **dict.fromkeys(("DEFAULT_BASE_URL", "CallEvent", "CloreClient", "Outcome"), "client"),
    **dict.fromkeys(("ApiError", "CloreError", "ConnectionFailed", "DatabaseError",
                     "ExceededMaxStep", "FieldError", "HttpError", "InvalidEndpoint",
                     "InvalidInput", "InvalidReply", "InvalidToken", "LoweringTooSoon",
                     "MissingApiKey", "OutcomeUnknown", "RateLimited", "RequestNotSent",
                     "RequestTimeout", "SnapshotNotFound"), "errors"),
    **dict.fromkeys(("FileLimiterState", "LimiterSnapshot", "MemoryLimiterState", "Priority",
                     "RateLimit", "RateLimiter", "RateLimits", "clore_rate_limits"), "ratelimit"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'bidder.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bidder.api.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_BASE_URL",
    "ApiError",
    "CallEvent",
    "CloreClient",
    "CloreError",
    "ConnectionFailed",
    "DatabaseError",
    "ExceededMaxStep",
    "FieldError",
    "FileLimiterState",
    "HttpError",
    "InvalidEndpoint",
    "InvalidInput",
    "InvalidReply",
    "InvalidToken",
    "LimiterSnapshot",
    "LoweringTooSoon",
    "MemoryLimiterState",
    "MissingApiKey",
    "Outcome",
    "OutcomeUnknown",
    "Priority",
    "RateLimit",
    "RateLimited",
    "RateLimiter",
    "RateLimits",
    "RequestNotSent",
    "RequestTimeout",
    "SnapshotNotFound",
    "clore_rate_limits",
]

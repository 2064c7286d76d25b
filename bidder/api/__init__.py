"""The Clore API client, its rate limiter and its errors.

``CloreClient`` speaks to the REST API and the GigaSPOT snapshot CDN; ``RateLimiter`` keeps every
user of a key within the published limits; ``bidder.api.errors`` says what went wrong and whether a
mutation may have happened. Reply and request models live in ``bidder.api.models``.
"""

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

"""Injected faults: the simulated market misbehaving as a real exchange and CDN do.

With ``SimOptions.faults`` = RATE, each request is answered with a fault with probability RATE
(from its own seeded generator, so the market's competitors and world events are unchanged):

- API calls: HTTP 500; HTTP 502 with an HTML body; a reply that hangs past the client's timeout;
  invalid JSON; ``code: 1``; HTTP 429 with ``Retry-After``; and, for mutating calls, a call the
  exchange carries out whose reply is then lost;
- CDN snapshots: HTTP 500, a truncated file, or a file that fails validation.

A fault that happens before the exchange acts changes nothing; ``lost_reply`` (and invalid JSON on a
mutating call) happen after it acted, so the caller cannot know the outcome.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import httpx

API_FAULTS = ("http_500", "http_502_html", "hang", "invalid_json", "code_1", "http_429")
MUTATING_FAULTS = (*API_FAULTS, "lost_reply")
CDN_FAULTS = ("http_500", "snapshot_truncated", "snapshot_invalid")
AFTER_ACTING = frozenset({"lost_reply", "invalid_json", "snapshot_truncated",
                          "snapshot_invalid"})
"""Faults applied to the reply of a request the market has handled."""
MUTATING = frozenset({"create_order", "set_spot_price", "cancel_order", "cancel_orders",
                      "create_gigaspot_orders", "edit_gigaspot_orders"})


class NoReply(Exception):
    """The reply never arrives: the request hangs (``hang``, nothing done) or the connection drops
    after the exchange acted (``lost_reply``). In process this is a read timeout."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)


class FaultInjector:
    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._random = random.Random(seed * 7919 + 17)
        self.counts: Counter[str] = Counter()
        """Injected faults by kind."""

    def pick(self, request: httpx.Request) -> str | None:
        """The fault for this request, or None."""
        if self.rate <= 0 or self._random.random() >= self.rate:
            return None
        path = request.url.path
        if path.startswith("/cdn/"):
            kinds: tuple[str, ...] = CDN_FAULTS
        elif path.rsplit("/", 1)[-1] in MUTATING:
            kinds = MUTATING_FAULTS
        else:
            kinds = API_FAULTS
        kind = self._random.choice(kinds)
        self.counts[kind] += 1
        return kind

    @staticmethod
    def before(kind: str) -> httpx.Response:
        """The reply of a fault that happens before the market acts (raises ``NoReply`` for a
        hang)."""
        if kind == "hang":
            raise NoReply(kind)
        if kind == "http_500":
            return httpx.Response(500, text="Internal Server Error")
        if kind == "http_502_html":
            return httpx.Response(502, headers={"content-type": "text/html"},
                                  text="<html><head><title>502 Bad Gateway</title></head><body>"
                                       "<center><h1>502 Bad Gateway</h1></center></body></html>")
        if kind == "code_1":
            return httpx.Response(200, json={"code": 1})
        if kind == "http_429":
            return httpx.Response(429, headers={"Retry-After": "2"}, json={"code": 5})
        raise ValueError(f"not a fault before acting: {kind}")

    @staticmethod
    def after(kind: str, response: httpx.Response) -> httpx.Response:
        """The reply of a fault that happens once the market has acted."""
        if kind == "lost_reply":
            raise NoReply(kind)
        if kind == "invalid_json":
            return httpx.Response(200, headers={"content-type": "application/json"},
                                  content=response.content[: max(1, len(response.content) // 2)]
                                  + b"\x00,}")
        if kind == "snapshot_truncated":
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=response.content[: len(response.content) // 2])
        if kind == "snapshot_invalid":
            if response.status_code != 200:
                return response
            return httpx.Response(200, headers={"content-type": "application/json"},
                                  content=json.dumps({"1": {"bids": "none", "online": "yes"}})
                                  .encode())
        raise ValueError(f"not a fault after acting: {kind}")

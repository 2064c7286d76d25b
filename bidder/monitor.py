"""Prometheus metrics and the health check of a running bot, served on ``[monitor] listen``.

``Metrics`` holds the bot's gauges, counters and histogram in a registry of its own (no global
registry: two bots in one process, or a test, never mix). ``Health`` says whether the heartbeat is
fresh. ``MonitorServer`` serves ``/metrics`` (Prometheus text format) and ``/healthz`` (200 and a
small JSON body while the heartbeat is fresh, 503 and the reason otherwise) from a thread of its
own; nothing it does touches the trading path beyond reading these values.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bidder.clock import Clock
from bidder.config import ConfigError

log = logging.getLogger(__name__)

CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: a cycle is mostly database work, but waits for the rate budget when it sends."""


class MonitorError(ConfigError):
    """``[monitor] listen`` cannot be served (the port is taken, the address is not ours)."""


class _MarketAges(Collector):
    """``bidder_market_data_age_seconds{market}``, worked out when scraped."""

    def __init__(self, ages: Callable[[], Mapping[str, float | None]]) -> None:
        self._ages = ages

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("bidder_market_data_age_seconds",
                                   "Seconds of the bot's clock since the market's last successful "
                                   "poll (NaN: none in this run)", labels=["market"])
        for market, age in sorted(self._ages().items()):
            family.add_metric([market], float("nan") if age is None else age)
        yield family


class Metrics:
    """The bot's metrics. ``market_ages()`` gives each market's data age when scraped."""

    def __init__(self, market_ages: Callable[[], Mapping[str, float | None]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.target_held = Gauge("bidder_target_held", "GPUs or servers of winning orders",
                                 ["target", "unit"], registry=r)
        self.target_wanted = Gauge("bidder_target_wanted", "GPUs or servers the target asks for",
                                   ["target", "unit"], registry=r)
        self.order_price = Gauge("bidder_order_price", "Price per day of each open order",
                                 ["target", "order", "server", "currency"], registry=r)
        self.spend_per_day = Gauge("bidder_spend_per_day", "Daily cost of every open order as if "
                                   "winning, fees included", ["currency"], registry=r)
        self.budget_per_day = Gauge("bidder_budget_per_day", "The configured daily budget",
                                    ["currency"], registry=r)
        self.api_calls = Counter("bidder_api_calls", "API call attempts by outcome",
                                 ["endpoint", "outcome"], registry=r)
        self.cycle_seconds = Histogram("bidder_cycle_seconds", "Wall seconds of a decide cycle",
                                       buckets=CYCLE_BUCKETS, registry=r)
        self.alerts = Counter("bidder_alerts", "Alerts raised", ["event"], registry=r)
        r.register(_MarketAges(market_ages))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Whether the bot is alive: its heartbeat (wall clock) is younger than ``stale_after``."""

    def __init__(self, wall: Clock, stale_after: float) -> None:
        self._wall = wall
        self._stale_after = stale_after
        self._started = wall.now()
        self._beat: float | None = None
        self._stopping: str | None = None
        self._detail: dict[str, Any] = {}
        self._lock = threading.Lock()

    def beat(self, detail: Mapping[str, Any]) -> None:
        with self._lock:
            self._beat = self._wall.now()
            self._detail = dict(detail)

    def stopping(self, reason: str) -> None:
        with self._lock:
            self._stopping = reason

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON body)."""
        now = self._wall.now()
        with self._lock:
            beat, stopping, detail = self._beat, self._stopping, dict(self._detail)
        body: dict[str, Any] = {"heartbeat_age": None if beat is None else round(now - beat, 3),
                                "stale_after": self._stale_after, **detail}
        if stopping is not None:
            return False, {"status": "stopping", "reason": stopping, **body}
        if beat is None:
            ok = now - self._started <= self._stale_after
            reason = "starting: no cycle yet" if ok else \
                f"no cycle in the {now - self._started:.0f} s since the start"
            return ok, {"status": "starting" if ok else "stale", "reason": reason, **body}
        if now - beat > self._stale_after:
            return False, {"status": "stale", "reason": f"last heartbeat {now - beat:.0f} s ago "
                           f"(limit {self._stale_after:g} s)", **body}
        return True, {"status": "ok", **body}


class MonitorServer:
    """Serves ``/metrics`` and ``/healthz`` on ``(host, port)`` (port 0: any free one) from a
    daemon thread, until ``close``."""

    def __init__(self, address: tuple[str, int], metrics: Metrics, health: Health) -> None:
        handler = _handler(metrics, health)
        try:
            self._server = ThreadingHTTPServer(address, handler)
        except OSError as err:
            raise MonitorError(f"[monitor] listen {address[0]}:{address[1]}: cannot listen there: "
                               f"{err.strerror or err}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bidder-monitor",
                                        daemon=True)
        self._thread.start()
        log.info("serving /metrics and /healthz on http://%s:%d", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def _handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif path == "/healthz":
                ok, body = health.check()
                self._answer(200 if ok else 503, "application/json",
                             json.dumps(body).encode())
            else:
                self._answer(404, "text/plain", b"not found: try /metrics or /healthz\n")

        def _answer(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("monitor: " + format, *args)

    return Handler

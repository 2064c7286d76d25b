"""The simulated market on loopback HTTP, for dry runs and demos (stdlib ``ThreadingHTTPServer``).

Each connection is translated into an ``httpx.Request`` and answered by ``SimMarket.handle``, so
the served market and the in-process transport behave identically. A ticker thread keeps the market
caught up with its clock between requests, so a fast clock never leaves hours of events to the
next request.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from bidder.sim.faults import NoReply
from bidder.sim.market import SimMarket

log = logging.getLogger(__name__)

HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
TICK_SECONDS = 1.0
"""Real seconds between two catch-ups of an idle market."""
HANG_SECONDS = 35.0
"""Real seconds an injected hang holds a request before dropping it: past the client's default
timeout (30 s)."""


class SimServer:
    """A running loopback server: ``url`` is the API base URL (``http://host:port/v1``)."""

    def __init__(self, httpd: ThreadingHTTPServer, market: SimMarket) -> None:
        self._httpd = httpd
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=httpd.serve_forever, name="bidder-sim-http", daemon=True),
            threading.Thread(target=self._tick, args=(market,), name="bidder-sim-tick", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}/v1"

    def shutdown(self) -> None:
        """Stop serving and release the port; returns when the server's threads have ended."""
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join()

    def _tick(self, market: SimMarket) -> None:
        while not self._stop.wait(TICK_SECONDS):
            market.advance_to(market.clock.now())


def serve(market: SimMarket, host: str = "127.0.0.1", port: int = 8765) -> SimServer:
    """Serve ``market`` on ``host:port`` (port 0: any free port) in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            host, port = self.server.server_address[:2]
            authority = self.headers.get("Host") or f"{host}:{port}"
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_HEADERS]
            request = httpx.Request(self.command, f"http://{authority}{self.path}", headers=headers,
                                    content=body)
            try:
                response = market.handle(request)
            except NoReply as lost:
                if lost.kind == "hang":
                    time.sleep(HANG_SECONDS)
                self.close_connection = True  # no reply at all
                return
            content = response.content
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
            log.debug("%s %s", self.address_string(), format % args)

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return SimServer(httpd, market)

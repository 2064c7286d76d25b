"""Helpers of the operations tests: a real loopback HTTP receiver for alerts (one that answers,
one that hangs) and a real Unix datagram socket standing in for systemd."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POSTed JSON body (Apprise's ``json://``)."""

    port: int
    received: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    release: threading.Event = field(default_factory=threading.Event)
    """A hanging receiver answers only once this is set."""
    arrived: threading.Event = field(default_factory=threading.Event)
    """Set when the first request arrived (even at a hanging receiver)."""

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.received.get(timeout=timeout)

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out


@contextmanager
def receiver(*, hang: bool = False, status: int = 200) -> Iterator[Receiver]:
    """A real loopback receiver on an ephemeral port; ``hang``: it never answers until the test
    ends (or ``release`` is set); ``status``: the HTTP status it answers with."""
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            rec = box["r"]
            rec.arrived.set()
            if hang:
                rec.release.wait(30)
            rec.received.put(body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box["r"] = rec = Receiver(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def notify_socket(tmp_path: Path | None = None) -> Iterator[tuple[str, socket.socket]]:
    """A bound Unix datagram socket as systemd holds it: ``(NOTIFY_SOCKET value, socket)``; with
    ``tmp_path`` a filesystem path, else an abstract ``@name``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if tmp_path is not None:
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        value = path
    else:
        name = f"bidder-test-{id(sock)}-{threading.get_ident()}"
        sock.bind("\0" + name)
        value = "@" + name
    sock.settimeout(10)
    try:
        yield value, sock
    finally:
        sock.close()


def datagrams(sock: socket.socket, timeout: float = 0.0) -> list[dict[str, str]]:
    """Every datagram waiting on ``sock`` (waiting up to ``timeout`` for the first), parsed."""
    out = []
    sock.settimeout(timeout if timeout > 0 else 0.0001)
    while True:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, TimeoutError, socket.timeout):
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        sock.settimeout(0.0001)

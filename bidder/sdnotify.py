"""The systemd notify protocol, so ``Type=notify`` with ``WatchdogSec=`` restarts a hung bot.

systemd passes a Unix datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); each datagram is newline-separated ``KEY=value`` lines. ``bidder run`` sends
``READY=1`` once its first cycle ran, ``WATCHDOG=1`` and ``STATUS=...`` with every heartbeat, and
``STOPPING=1`` on the way out. Without ``NOTIFY_SOCKET`` every call does nothing. A send that fails
is logged once and never raises: systemd's absence must not stop the bot.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify datagrams to ``NOTIFY_SOCKET`` of ``environ`` (default: the process's)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        elif path:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying systemd",
                        path)
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_seconds: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) \
            else None
        """``WatchdogSec=`` of the unit (systemd sets ``WATCHDOG_USEC``), None when off."""
        self._failed = False
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (``send(READY="1", STATUS="...")``); True when sent."""
        if self._address is None:
            return False
        text = "\n".join(f"{k}={' '.join(str(v).split())}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(text.encode(), self._address)
        except OSError as err:
            if not self._failed:
                log.warning("cannot notify systemd through NOTIFY_SOCKET: %s", err)
                self._failed = True
            return False
        return True

    def heartbeat(self, status: str) -> None:
        """After each cycle: ``READY=1`` the first time, ``WATCHDOG=1`` and the status line."""
        fields = {"WATCHDOG": "1", "STATUS": status}
        if not self.ready_sent:
            fields = {"READY": "1", **fields}
        if self.send(**fields):
            self.ready_sent = True

    def stopping(self, status: str) -> None:
        self.send(STOPPING="1", STATUS=status)

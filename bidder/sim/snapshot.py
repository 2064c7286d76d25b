"""The GigaSPOT snapshot CDN: the whole market as one JSON file, republished when it changes.

Serving must stay cheap while competitors move prices all day, so each machine's JSON is cached and
rebuilt only when the exchange marks the machine changed; a file is assembled from those pieces
only when someone asks for the newest one and the market moved since the last file.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

from bidder.sim.exchange import Exchange


class SnapshotCdn:
    def __init__(self, exchange: Exchange, *, keep: int, interval: float, prefix: str) -> None:
        self._exchange = exchange
        self._keep = keep
        self._interval = interval
        self._prefix = prefix
        self._pieces: dict[int, bytes] = {}
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._published_at = -math.inf
        self._pending = True
        self._count = 0

    def latest(self, now: float) -> str:
        """The newest file's name, publishing a new file first if the market changed since."""
        self._pending |= self._refresh_pieces()
        if self._pending and now - self._published_at >= self._interval:
            self._publish(now)
        return next(reversed(self._files))

    def file(self, name: str) -> bytes | None:
        """A published file's bytes; ``None`` once it is older than the last ``keep`` files."""
        return self._files.get(name)

    def _publish(self, now: float) -> None:
        self._count += 1
        name = f"{self._prefix}_{self._count:06d}_{int(now)}.json"
        machines = self._exchange.world.machines
        self._files[name] = b"{" + b", ".join(self._pieces[m] for m in machines) + b"}"
        while len(self._files) > self._keep:
            self._files.popitem(last=False)
        self._published_at = now
        self._pending = False

    def _refresh_pieces(self) -> bool:
        """Rebuild the pieces of changed machines; True when any piece actually differs."""
        changed = False
        exchange = self._exchange
        for machine_id in sorted(exchange.changed_machines):
            machine = exchange.world.machines[machine_id]
            holder = exchange.holder(machine_id)
            bids = [{"owner": o.owner, "id": o.id, "active": o is holder, "to_cache": True,
                     "cached": o.cached, "price": o.price, "currency": o.currency, "pl": o.pl}
                    for o in exchange.book(machine_id)]
            entry = json.dumps({"bids": bids, **machine.snapshot_fields()})
            piece = f'"{machine_id}": {entry}'.encode()
            if self._pieces.get(machine_id) != piece:
                self._pieces[machine_id] = piece
                changed = True
        exchange.changed_machines.clear()
        return changed

"""The simulated market's time line: actions due at given times, run in order.

Everything that happens by itself (competitors acting, machines going offline, orders expiring)
is an action on this queue. Equal times run in the order they were scheduled, so a seed and a
sequence of requests always give the same market.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Action = Callable[[float], None]
"""Called with the time it was due at."""


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()

    def at(self, when: float, action: Action) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def run_until(self, t: float) -> None:
        """Run every action due at or before ``t``, including those scheduled meanwhile."""
        while self._heap and self._heap[0][0] <= t:
            when, _, action = heapq.heappop(self._heap)
            action(when)

    def __len__(self) -> int:
        return len(self._heap)

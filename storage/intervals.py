"""The interval encoding's one rule, shared by GigaSPOT snapshots and marketplace listings.

Each key (a machine, a bid, a server) has at most one *open* version: a row valid from ``first``
onwards. A new observation either matches it (nothing is written), or differs (the old row is
closed at this observation and a new one opened), or is missing (the row is closed, unless absence
does not end it: facts outlive a machine's absence).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class IntervalChanges(Generic[K, V]):
    opened: list[tuple[K, V]]
    """New versions to insert, with ``first`` = this observation."""
    closed: list[tuple[K, int]]
    """``(key, first)`` of the rows to close at this observation."""
    open_rows: dict[K, tuple[int, V]]
    """Every open row after this observation: key -> (first, value)."""


def diff_versions(open_rows: Mapping[K, tuple[int, V]], current: Mapping[K, V], at: int, *,
                  close_missing: bool = True) -> IntervalChanges[K, V]:
    """What observation ``at`` (``current``: key -> value) changes in the open rows.

    ``open_rows`` is not modified, so a caller whose transaction fails keeps its old state.
    """
    opened: list[tuple[K, V]] = []
    closed: list[tuple[K, int]] = []
    after: dict[K, tuple[int, V]] = {}
    for key, value in current.items():
        previous = open_rows.get(key)
        if previous is not None and previous[1] == value:
            after[key] = previous
            continue
        if previous is not None:
            closed.append((key, previous[0]))
        opened.append((key, value))
        after[key] = (at, value)
    for key, previous in open_rows.items():
        if key not in current:
            if close_missing:
                closed.append((key, previous[0]))
            else:
                after[key] = previous
    return IntervalChanges(opened, closed, after)

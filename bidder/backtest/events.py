"""Per-server columns that change now and then, stored as their changes by tick.

Recorded history is interval-encoded (a version holds from one snapshot to another), so the
market a backtest replays changes little from one tick to the next. An ``EventStream`` keeps only
those changes, in CSR form by tick: the runner applies a tick's few changes to its current
columns in place (``apply``), and the oracle rebuilds a block of ticks at once (``dense``). Memory
grows with the number of changes, not with ticks x servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Columns = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class EventStream:
    """Changes of some columns of ``n`` servers over ``T`` ticks.

    ``start[t]:start[t+1]`` are tick ``t``'s events; each sets ``values[c][e]`` into column ``c`` at
    server row ``row[e]``. At most one event per (tick, row). ``initial`` holds each column before
    any event.
    """

    start: np.ndarray
    """int64, length T + 1"""
    row: np.ndarray
    """int64, length E"""
    values: Mapping[str, np.ndarray]
    """column -> values (length E)"""
    initial: Mapping[str, np.ndarray]
    """column -> values before any event (length n)"""

    @classmethod
    def build(cls, n_ticks: int, tick: np.ndarray, row: np.ndarray, values: Mapping[str, np.ndarray],
              initial: Mapping[str, np.ndarray]) -> EventStream:
        """Events in any order; when one (tick, row) has several, the last one given wins."""
        tick = np.asarray(tick, dtype=np.int64)
        row = np.asarray(row, dtype=np.int64)
        inside = (tick >= 0) & (tick < n_ticks)
        order = np.flatnonzero(inside)
        # by (tick, row), ties in the order given: one stable sort of a combined key
        span = int(row.max(initial=0)) + 1
        order = order[np.argsort(tick[order] * span + row[order], kind="stable")]
        tick, row = tick[order], row[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = (tick[1:] != tick[:-1]) | (row[1:] != row[:-1])
        keep = order[last]
        start = np.searchsorted(tick[last], np.arange(n_ticks + 1), side="left").astype(np.int64)
        return cls(start, row[last], {c: np.asarray(v)[keep] for c, v in values.items()},
                   dict(initial))

    @property
    def n_ticks(self) -> int:
        return len(self.start) - 1

    def __len__(self) -> int:
        return len(self.row)

    def current(self) -> Columns:
        """Fresh columns as they are before the first tick's events."""
        return {c: v.copy() for c, v in self.initial.items()}

    def apply(self, tick: int, columns: Columns) -> np.ndarray:
        """Apply tick ``tick``'s events to ``columns`` in place; the rows they changed."""
        a, b = self.start[tick:tick + 2].tolist()
        rows = self.row[a:b]
        if a < b:
            for name, values in self.values.items():
                columns[name][rows] = values[a:b]
        return rows

    def ticks(self) -> np.ndarray:
        """The tick of every event (int64, length E)."""
        return np.repeat(np.arange(self.n_ticks, dtype=np.int64), np.diff(self.start))

    def at(self, rows: np.ndarray, ticks: np.ndarray,
           columns: Iterable[str] | None = None) -> Columns:
        """Every column's (or the named ``columns``') value at each (``rows[i]``, ``ticks[i]``): the
        row's latest event at or before that tick, else its initial value. For the loader's many
        point look-ups."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {name: np.asarray(self.initial[name])[rows]
               for name in (self.initial if columns is None else columns)}
        if not len(self.row):
            return out
        span = self.n_ticks + 1
        key = self.row * span + self.ticks()
        order = np.argsort(key, kind="stable")
        found = np.searchsorted(key[order], rows * span + np.asarray(ticks, dtype=np.int64),
                                side="right") - 1
        event = order[np.maximum(found, 0)]
        hit = (found >= 0) & (self.row[event] == rows)
        for name, column in out.items():
            column[hit] = self.values[name][event[hit]]
        return out

    def dense(self, lo: int, hi: int, carry: Mapping[str, np.ndarray],
              columns: Iterable[str] | None = None) -> Columns:
        """Every column (or the named ``columns``) at every tick of ``lo:hi`` as (hi - lo, n)
        arrays; ``carry`` is the columns as they were before tick ``lo`` (the last row of the
        previous block, or ``initial``)."""
        n = len(next(iter(self.initial.values())))
        names = list(self.values if columns is None else columns)
        a, b = self.start[lo:hi + 1:hi - lo].tolist() if hi > lo else (0, 0)
        if a == b:  # nothing changes in the block
            return {name: np.repeat(np.asarray(carry[name])[np.newaxis], hi - lo, axis=0)
                    for name in names}
        # the latest event of each (tick, row) so far; int32 halves the work of these passes
        index = np.int32 if b <= np.iinfo(np.int32).max else np.int64
        ticks = np.repeat(np.arange(hi - lo, dtype=np.int32), np.diff(self.start[lo:hi + 1]))
        latest = np.full((hi - lo, n), -1, dtype=index)
        latest[ticks, self.row[a:b]] = np.arange(a, b, dtype=index)
        np.maximum.accumulate(latest, axis=0, out=latest)
        has = latest >= 0
        out: Columns = {}
        for name in names:
            # -1 (no event yet) picks the last value, which ``where`` replaces by the carry
            out[name] = np.where(has, self.values[name][latest], carry[name])
        return out


def carry_after(block: Mapping[str, np.ndarray]) -> Columns:
    """The last row of a ``dense`` block: the carry of the next block."""
    return {c: v[-1].copy() for c, v in block.items()}

"""Query rows to numpy columns, and interval expansion: the two conversions every reader needs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np


def to_columns(rows: Sequence[Sequence[Any]], dtypes: Sequence[Any]) -> list[np.ndarray]:
    """Rows to one array per column of the given dtype (float, int, bool or ``object`` for text).

    Numbers go through one float64 table (fast, and exact for integers below 2**53, which every id
    is); None becomes NaN (float), -1 (int), False (bool) or "" (text).
    """
    if not rows:
        return [np.empty(0, dtype=dtype) for dtype in dtypes]
    numeric = [i for i, dtype in enumerate(dtypes) if dtype is not object]
    if len(numeric) == len(dtypes):
        table = _float_table(rows, len(dtypes))
    else:
        table = np.array([[row[i] for i in numeric] for row in rows], dtype=np.float64)
    arrays: list[np.ndarray] = []
    for i, dtype in enumerate(dtypes):
        if dtype is object:
            arrays.append(np.array(["" if row[i] is None else row[i] for row in rows], dtype=object))
            continue
        column = table[:, numeric.index(i)]
        if dtype is bool or np.dtype(dtype) == np.bool_:
            arrays.append(column == 1.0)
        elif np.issubdtype(dtype, np.integer):
            arrays.append(np.where(np.isnan(column), -1, column).astype(dtype))
        else:
            arrays.append(column.astype(dtype))
    return arrays


def _float_table(rows: Sequence[Sequence[Any]], width: int) -> np.ndarray:
    """Rows of numbers as a float64 table. Streaming the values is twice as fast as building the
    table from the row tuples, but only takes numbers: a None anywhere takes the slow way."""
    try:
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.float64, len(rows) * width)
    except TypeError:
        return np.array(rows, dtype=np.float64)
    return flat.reshape(len(rows), width)


def expand(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intervals of indices [first, last] to entries: (interval, index) for every index each
    interval covers, interval by interval."""
    lengths = np.maximum(last - first + 1, 0)
    interval = np.repeat(np.arange(len(first), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    index = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets - first, lengths)
    return interval, index

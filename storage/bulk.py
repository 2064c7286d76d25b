"""Bulk writes and reads through the driver's own ``executemany`` and cursor.

A fully changed GigaSPOT snapshot writes some 80,000 rows, and a backtest reads hundreds of
thousands. SQLAlchemy's per-row parameter and result processing costs about as much again as the
driver itself, so these hot paths compile the statement once with SQLAlchemy (portable SQL for the
connected dialect) and exchange plain tuples with the driver. Values written must therefore be what
the driver takes as they are (``int``, ``float``, ``bool``, ``str``, ``None``; JSON as an encoded
``str``), and values read come back as the driver gives them (SQLite: booleans as 0/1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement


def executemany(connection: Connection, statement: ClauseElement, names: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> None:
    """Run ``statement`` once per row; ``names`` are the bind parameters (for an ``insert``: the
    columns) in the order of each row's values."""
    if not rows:
        return
    compiled = statement.compile(dialect=connection.dialect, column_keys=list(names))
    if compiled.positional:
        order = [names.index(key) for key in compiled.positiontup or ()]
        params: Sequence[Any] = rows if order == list(range(len(names))) else \
            [tuple(row[i] for i in order) for row in rows]
    else:
        params = [dict(zip(names, row)) for row in rows]
    connection.exec_driver_sql(str(compiled), params)  # type: ignore[arg-type]


def fetch_rows(connection: Connection, statement: ClauseElement) -> list[tuple[Any, ...]]:
    """All rows of a ``select`` as the driver returns them."""
    compiled = statement.compile(dialect=connection.dialect,
                                 compile_kwargs={"render_postcompile": True})
    values = compiled.params
    params: Any = tuple(values[key] for key in compiled.positiontup or ()) \
        if compiled.positional else values
    cursor = _cursor(connection)
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _cursor(connection: Connection) -> Any:
    """The DBAPI cursor: plain tuples, no Row objects. psycopg's asks for binary results: the
    same Python values (int, float, bool, str), without parsing each from text, which took a
    fifth of the live frame's time on PostgreSQL."""
    if connection.dialect.driver == "psycopg":
        raw: Any = connection.connection.dbapi_connection
        return raw.cursor(binary=True)
    return connection.connection.cursor()

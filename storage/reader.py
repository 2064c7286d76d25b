"""Reading the database without SQLAlchemy: the DB-API drivers, read-only, for ``bidder status``.

A monitor runs ``bidder status`` every minute; importing SQLAlchemy and mapping the models costs
more than the whole query work. This layer opens the database with the driver itself, read-only:

- SQLite through ``sqlite3`` with a ``file:PATH?mode=ro`` URI (a missing file is refused, never
  created), all queries in one read transaction, so they see one commit (WAL: never blocking the
  bot's writes);
- PostgreSQL through ``psycopg`` (imported only then), in a read-only repeatable-read transaction.

It never migrates: a database whose schema version is not ``SCHEMA_VERSION`` is refused with the
messages ``storage.schema`` gives. SQL is written with ``?`` placeholders and turned into the
driver's style. ``reader_of`` wraps an ORM ``Session``'s connection instead (the running bot reads
its status inside its own transaction), so there is one status query code for both.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from storage.errors import StorageError, schema_too_new, schema_too_old

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

SCHEMA_VERSION = 7
"""The schema version this program reads and writes: the last of ``storage.migrations``
(``storage.schema.SCHEMA_VERSION``; a test checks they agree, so bump this with a new migration)."""
DEFAULT_BUSY_TIMEOUT = 10.0
"""Seconds a connection waits for another one's write lock."""


def backend_name(url: str) -> str:
    """``sqlite``, ``postgresql``, ...: the URL's scheme without its driver (``+psycopg``)."""
    return url.partition("://")[0].partition("+")[0]


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; ``None`` for other databases and in-memory SQLite."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.partition("+")[0] != "sqlite":
        return None
    database = unquote(rest.partition("/")[2].partition("?")[0])
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def shown_url(url: str) -> str:
    """``url`` fit for messages and logs: any password replaced by ``***``. The password runs to
    the last ``@``, so one with an unencoded ``/``, ``?`` or ``@`` is hidden whole too (even in a
    URL that cannot be parsed; rather too much hidden than a password shown)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, tail = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon or "/" in user:  # no password (or a path with '@' and ':' in it)
        return url
    return f"{scheme}://{user}:***@{tail}"


def not_a_url(url: str, why: str = "") -> StorageError:
    """The error for a database URL that cannot be parsed, its password hidden."""
    return StorageError(f"{shown_url(url)!r} is not a database URL{why} (e.g. "
                        "sqlite:///path/bidder.db, postgresql+psycopg://user@host/db)")


def require_numeric_port(url: str) -> None:
    """Refuse (``not_a_url``) a server URL whose port is not a number: SQLAlchemy fails on it with
    a bare ``int()`` error, psycopg by failing to resolve the host."""
    port = _bad_port(url)
    if port is not None:
        raise not_a_url(url, f": its port {port!r} is not a number")


def _bad_port(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.partition("+")[0] == "sqlite":
        return None
    hosts = rest.rpartition("@")[2].partition("?")[0].partition("/")[0]  # past any password
    for host in hosts.split(","):  # libpq takes host1:port1,host2:port2
        after = host.rpartition("]")[2] if host.startswith("[") else host  # [IPv6]:port
        _, colon, port = after.partition(":")
        if colon and not port.isdigit():
            return port
    return None


def json_value(value: Any) -> Any:
    """A JSON column's value: SQLite returns its text, psycopg may have decoded it already."""
    return json.loads(value) if isinstance(value, str | bytes | bytearray) else value


class Reader:
    """A DB-API connection read with ``?``-placeholder SQL, whatever its driver's style."""

    def __init__(self, connection: Any, url: str, *, owned: bool) -> None:
        self._connection = connection
        self._url = url
        self._owned = owned
        self.backend = "sqlite" if isinstance(connection, sqlite3.Connection) else "postgresql"
        errors: list[type[BaseException]] = [sqlite3.Error]
        if self.backend == "postgresql":
            import psycopg

            errors.append(psycopg.Error)
        self._errors = tuple(errors)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.backend != "sqlite":
            sql = sql.replace("?", "%s")
        try:
            cursor = self._connection.cursor()
            try:
                if params:
                    cursor.execute(sql, tuple(params))
                else:  # sqlite3 refuses None for "no parameters"; psycopg then leaves % alone
                    cursor.execute(sql)
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except self._errors as err:
            where = f" {shown_url(self._url)}" if self._url else ""
            raise StorageError(f"cannot read the database{where}: {str(err).strip()}") from None

    def row(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.row(sql, params)
        return None if row is None else row[0]

    def schema_version(self) -> int:
        """The database's schema version; 0 without a ``schema_version`` table or row."""
        if self.backend == "sqlite":
            exists = self.scalar("SELECT count(*) FROM sqlite_master "
                                 "WHERE type = 'table' AND name = 'schema_version'")
        else:
            exists = self.scalar("SELECT to_regclass('schema_version') IS NOT NULL")
        return int(self.scalar("SELECT max(version) FROM schema_version") or 0) if exists else 0

    def require_current(self) -> None:
        """Refuse, changing nothing, a database whose schema is not this program's."""
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise schema_too_new(shown_url(self._url), found, SCHEMA_VERSION)
        if found < SCHEMA_VERSION:
            raise schema_too_old(shown_url(self._url), found, SCHEMA_VERSION)

    def close(self) -> None:
        if self._owned:
            self._connection.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def reader_of(source: Reader | Session) -> Reader:
    """``source`` itself, or a reader on an ORM session's connection, inside its transaction
    (pending changes flushed first, as the ORM's own queries would)."""
    if isinstance(source, Reader):
        return source
    source.flush()
    return Reader(source.connection().connection.driver_connection, "", owned=False)


def open_reader(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Reader:
    """Open ``url`` read-only and check its schema version. Every failure is a ``StorageError``
    naming the database (its password hidden): a missing SQLite file, a bad URL, a missing driver,
    a server that does not answer, a schema this program does not read."""
    backend = backend_name(url)
    require_numeric_port(url)
    if backend == "sqlite":
        connection: Any = _open_sqlite(url, busy_timeout)
    elif backend == "postgresql":
        connection = _open_postgresql(url)
    else:
        raise StorageError(f"cannot open the database {shown_url(url)}: not a sqlite:/// or "
                           "postgresql:// URL")
    reader = Reader(connection, url, owned=True)
    try:
        reader.require_current()
    except BaseException:
        reader.close()
        raise
    return reader


def _open_sqlite(url: str, busy_timeout: float) -> sqlite3.Connection:
    path = sqlite_path(url)
    if path is None:
        raise StorageError(f"cannot open the database {shown_url(url)}: not a SQLite file "
                           "(sqlite:///PATH)")
    if not path.exists():
        raise StorageError(f"no database at {path}: nothing has been recorded there yet")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=busy_timeout, isolation_level=None)
        connection.execute("BEGIN")  # one read snapshot for every query (taken at the first)
    except sqlite3.Error as err:
        raise StorageError(f"cannot open the database {shown_url(url)}: {err}") from None
    return connection


def _open_postgresql(url: str) -> Any:
    try:
        import psycopg
    except ImportError as err:
        raise StorageError(f"cannot open the database {shown_url(url)}: {err} "
                           "(pip install 'clore-bidder[postgres]')") from None
    try:
        connection = psycopg.connect(f"postgresql://{url.partition('://')[2]}")
        connection.read_only = True
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    except psycopg.Error as err:
        raise StorageError(f"cannot open the database {shown_url(url)}: "
                           f"{str(err).strip()}") from None
    return connection

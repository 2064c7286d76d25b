"""Engines and sessions: how the bot, ``bidder status`` and a backtest open the same database.

SQLite is the default; every SQLite-specific line is a connection pragma here, so a PostgreSQL URL
can follow. The pragmas make one writer and many readers get along:

- WAL journal: readers see the last commit and never block the writer (nor it them);
- ``busy_timeout``: a second writer waits for the lock instead of failing at once;
- writers open each transaction with ``BEGIN IMMEDIATE``, so they queue for the write lock at the
  start instead of failing half-way when another writer committed in between;
- readers set ``query_only``: ``bidder status`` cannot write by mistake;
- ``foreign_keys`` on, ``synchronous=NORMAL`` (durable across application crashes; WAL keeps the
  file consistent across power loss), a 32 MiB page cache.

PostgreSQL needs none of this: its readers see the last commit and never block a writer (MVCC),
and readers' sessions are read-only (``default_transaction_read_only``). Its driver is psycopg 3
(``pip install 'clore-bidder[postgres]'``, URLs ``postgresql+psycopg://user@host/db``).

No global engine or session: callers make a ``sessionmaker`` here and pass it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import StorageError
from storage.reader import (  # shared with bidder status
    DEFAULT_BUSY_TIMEOUT,
    not_a_url,
    require_numeric_port,
    sqlite_path,
)
from storage.reader import shown_url as light_shown_url
from storage.schema import require_current, upgrade

CACHE_KIB = 32_768
"""Page cache per SQLite connection: a snapshot touches a few MB of index pages; the default 2 MB
cache would read them back from the OS on every snapshot."""


def engine_url(url: str) -> URL:
    """``url`` as this program's engines open it (``StorageError`` when it is not a URL):

    - ``postgresql://`` names no driver: psycopg 3, the one the ``[postgres]`` extra brings
      (SQLAlchemy would pick psycopg2);
    - a SQLite file: its path with ``~`` expanded (``sqlite_path``), the file the checks here and
      ``bidder status`` look at (sqlite3 would open a folder named ``~``)."""
    require_numeric_port(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise not_a_url(url) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    path = sqlite_path(url)
    if path is not None:
        parsed = parsed.set(database=str(path))
    return parsed


def make_engine(url: str, *, writer: bool, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Engine:
    """An engine for ``url``. A writer creates a missing SQLite file (and its folders); a reader
    refuses one that does not exist, so a typo in a path is not answered by an empty database."""
    parsed = engine_url(url)
    path = sqlite_path(url)
    if path is not None:
        if writer:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.exists():
            raise StorageError(f"no database at {path}: nothing has been recorded there yet")
    if parsed.get_backend_name() == "postgresql" and not writer:
        # readers (``bidder status``, a backtest) cannot write by mistake, as SQLite's query_only
        engine = create_engine(parsed, connect_args={
            "options": "-c default_transaction_read_only=on"})
    else:
        engine = create_engine(parsed)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, writer=writer, busy_timeout=busy_timeout)
    return engine


def _configure_sqlite(engine: Engine, *, writer: bool, busy_timeout: float) -> None:
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module (it would BEGIN lazily, only before a
        # write); SQLAlchemy's "begin" event below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if writer:
            cursor.execute("PRAGMA journal_mode = WAL")
        else:
            cursor.execute("PRAGMA query_only = ON")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """The ``sessionmaker`` every job takes its one ``Session`` from."""
    return sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True, slots=True)
class Database:
    """An open database: its engine and the ``sessionmaker`` jobs take their sessions from."""

    engine: Engine
    sessions: sessionmaker[Session]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_database(url: str, *, writer: bool,
                  busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Database:
    """Open the database for a command. A writer (``bidder record``/``run``/``import``) brings the
    schema up to date; a reader (``bidder status``, a backtest) never migrates and refuses a
    database whose schema version is not this program's (``SchemaVersionError``).

    Every failure is a ``StorageError`` naming the database (its password hidden): a bad URL, a
    missing driver, a folder that cannot be made, a server that does not answer."""
    try:
        engine = make_engine(url, writer=writer, busy_timeout=busy_timeout)
    except (OSError, SQLAlchemyError, ImportError, ValueError) as err:
        raise StorageError(f"cannot open the database {shown_url(url)}: {err}") from None
    try:
        if writer:
            upgrade(engine)
        else:
            require_current(engine)
    except (OSError, SQLAlchemyError) as err:
        engine.dispose()
        raise StorageError(f"cannot open the database {shown_url(url)}: {err}") from None
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, session_factory(engine))


def shown_url(url: str) -> str:
    """``url`` fit for messages and logs: any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):  # e.g. a port that is not a number
        return light_shown_url(url)

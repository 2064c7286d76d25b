"""``storage.reader`` (``bidder status``'s driver-level access) agrees with ``storage.db`` and
``storage.schema``: the schema version, the SQLite file behind a URL, passwords hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from storage import reader
from storage.errors import StorageError
from storage.migrations import MIGRATIONS
from storage.schema import SCHEMA_VERSION


def test_the_reader_knows_the_schema_version_the_migrations_build():
    """A new migration must bump ``storage.reader.SCHEMA_VERSION`` too, or status refuses (or
    misreads) the databases the bot writes."""
    assert reader.SCHEMA_VERSION == SCHEMA_VERSION == MIGRATIONS[-1].version


@pytest.mark.parametrize("url", [
    "sqlite:///x.db", "sqlite:////abs/x.db", "sqlite:///~/x.db", "sqlite://", "sqlite:///:memory:",
    "sqlite:///a%20b.db", "sqlite:///x.db?timeout=3", "sqlite+pysqlite:///y.db",
    "sqlite:///file:x.db?mode=ro&uri=true", "postgresql+psycopg://u:p@h/db",
])
def test_the_sqlite_file_is_the_one_sqlalchemy_opens(url):
    parsed = make_url(url)
    database = parsed.database or ""
    expected = None if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") \
        or database.startswith("file:") else Path(database).expanduser()
    assert reader.sqlite_path(url) == expected


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://bot:s3cr%40t@db.example:5432/bidder?sslmode=require",
     "postgresql+psycopg://bot:***@db.example:5432/bidder?sslmode=require"),
    ("postgresql://bot@db.example/bidder", "postgresql://bot@db.example/bidder"),
    ("sqlite:////var/lib/bidder.db", "sqlite:////var/lib/bidder.db"),
])
def test_passwords_are_hidden(url, shown):
    assert reader.shown_url(url) == shown
    assert make_url(url).render_as_string(hide_password=True) == shown


def test_an_unknown_kind_of_database_is_one_clear_error():
    with pytest.raises(StorageError, match="not a sqlite:/// or postgresql:// URL"):
        reader.open_reader("mysql://u:secret@h/db")


def test_the_last_poll_is_one_index_lookup(sqlite_url):
    """``bidder status`` finds each endpoint's last successful poll in the API calls' index
    (schema 7): a plan that scans the journal, a row per call for the bot's whole life, fails
    here instead of slowing every status call of a months-old bot."""
    from bidder.status import LAST_POLL_SQL
    from storage.db import open_database

    with open_database(sqlite_url, writer=True) as db, db.engine.connect() as connection:
        sql = LAST_POLL_SQL.replace("?", "'get_gigaspot'")
        plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert plan == ["SEARCH api_call USING COVERING INDEX ix_api_call_poll_age "
                    "(endpoint=? AND outcome=?)"]

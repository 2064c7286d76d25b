"""Shared test configuration. Component tests keep their own fixtures in their folders.

Databases: every test that takes ``db_url`` (or a folder's ``database`` fixture built on it) runs
twice, once on SQLite and once on PostgreSQL, each time on a fresh, empty database:

- ``db_url``: the URL of a new empty database of this test's backend (``sqlite:///<tmp>/...`` or
  ``postgresql+psycopg://.../bidder_test_N``); the test (or its ``database`` fixture) creates the
  schema by opening it as a writer, as the commands do.
- ``db_backend``: ``"sqlite"`` or ``"postgresql"``, the backend of this test's leg.
- ``fresh_db_url(backend=None)``: another new empty database, of this leg's backend unless
  ``backend`` says otherwise (``bidder db copy`` tests copy between the two).
- ``sqlite_url``: a SQLite file only, for tests of SQLite itself (pragmas, file handling);
  ``pg_url``: a new PostgreSQL database only (not parametrised), for tests of PostgreSQL only.

The PostgreSQL server: ``BIDDER_TEST_PG_URL`` (a server URL whose user may create databases;
``.ci/run`` starts a throwaway one with ``tests/pg_server.py`` and sets it), else a server this
session starts itself from the machine's binaries (``pg_config --bindir``) and stops at the end.
With neither (no binaries, or psycopg not installed) the PostgreSQL leg is skipped with the reason
printed; ``BIDDER_REQUIRE_PG=1`` (set by ``.ci/run``) makes that a failure instead, so CI never
passes without it. To use it in a new folder: take ``db_url`` (or ``database``) in the test, and
the test runs on both backends.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pg_server

BACKENDS = ("sqlite", "postgresql")
PG_URL_ENV = "BIDDER_TEST_PG_URL"
REQUIRE_PG_ENV = "BIDDER_REQUIRE_PG"
SOAK_SEED_BASE = 1000
"""``--soak-seeds N`` adds the soak's seeds 1000 .. 1000 + N - 1."""
_names = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-seeds", type=int, default=0, metavar="N",
                     help="run the soak tests (tests/bot/test_bot_soak.py) on N more seeded "
                          "markets and kill sequences beside the fixed one: a longer campaign "
                          "than CI's (each takes seconds)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``soak_seed``: None (the fixed seed) and the seeds ``--soak-seeds`` asks for."""
    if "soak_seed" in metafunc.fixturenames:
        extra = int(metafunc.config.getoption("soak_seeds"))
        if extra < 0:
            raise pytest.UsageError(f"--soak-seeds must be 0 or more, got {extra}")
        seeds = [None, *range(SOAK_SEED_BASE, SOAK_SEED_BASE + extra)]
        metafunc.parametrize("soak_seed", seeds,
                             ids=["fixed" if s is None else f"seed{s}" for s in seeds])


@pytest.fixture(autouse=True)
def restore_logging():
    """CLI commands configure the root logger for their process; undo that after every test so
    one command's handlers never leak into the next test (or swallow pytest's log capture)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quietened = {name: logging.getLogger(name).level for name in ("httpx", "apscheduler")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quietened.items():  # setup_logging quietens these; a later test may not
        logging.getLogger(name).setLevel(old)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str | None]:
    """A PostgreSQL server's URL (its ``postgres`` database), or None with ``pg_unavailable``
    saying why. Started only when a PostgreSQL leg first asks for it."""
    given = os.environ.get(PG_URL_ENV)
    if given:
        yield given
        return
    if _missing_driver() or pg_server.bindir() is None:
        yield None
        return
    folder, url = pg_server.start()
    try:
        yield url
    finally:
        pg_server.stop(folder)


def _missing_driver() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test,postgres]')"
    return None


def _pg_unavailable() -> str:
    return _missing_driver() or (
        f"no PostgreSQL server: {PG_URL_ENV} is not set and no server binaries were found "
        "(pg_config --bindir, /usr/lib/postgresql/*/bin)")


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fresh_db_url(db_backend: str, new_database: Callable[[str], str]) -> Callable[..., str]:
    """``fresh_db_url(backend=None)``: the URL of a new, empty database (dropped after the test)."""
    return lambda backend=None: new_database(backend or db_backend)


@pytest.fixture
def pg_url(new_database: Callable[[str], str]) -> str:
    """A new, empty PostgreSQL database, for tests of PostgreSQL only (e.g. processes sharing
    one Optuna study); skipped/failed like the PostgreSQL legs when there is no server."""
    return new_database("postgresql")


@pytest.fixture
def new_database(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """``new_database(backend)``: the URL of a new, empty database (dropped after the test)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    made: list[str] = []
    admin = None

    def make(backend: str) -> str:
        nonlocal admin
        n = next(_names)
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'db{n}' / 'bidder.db'}"
        server = request.getfixturevalue("pg_server_url")
        if server is None:
            reason = f"PostgreSQL leg not run: {_pg_unavailable()}"
            if os.environ.get(REQUIRE_PG_ENV) == "1":
                pytest.fail(f"{reason} ({REQUIRE_PG_ENV}=1)")
            pytest.skip(reason)
        if _missing_driver():
            pytest.fail(_missing_driver())
        if admin is None:
            admin = create_engine(server, isolation_level="AUTOCOMMIT")
        name = f"bidder_test_{os.getpid()}_{n}"
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(server).set(database=name).render_as_string(hide_password=False)

    yield make
    if admin is not None:
        with admin.connect() as connection:
            for name in made:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(fresh_db_url: Callable[..., str]) -> str:
    """A new, empty database of this leg's backend (see the module docstring)."""
    return fresh_db_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file, for tests of SQLite's own behaviour (not run on PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'data' / 'bidder.db'}"

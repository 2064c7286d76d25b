"""Storage test fixtures: a fresh database per test (SQLite and PostgreSQL: ``db_url`` in
``tests/conftest.py``) and the documented example snapshot."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.db import Database, open_database
from storage.gigaspot_ingest import IngestResult, SnapshotIngester
from storage.models import Base

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1735176176
"""The documented example snapshot's time (``prod_6K80i2Tyvm_1735176176.json``)."""


@pytest.fixture
def doc_snapshot() -> dict[str, Any]:
    """The example snapshot of the GigaSPOT docs: machine 35083 (8 GPUs, no bids) and 40329
    (1 RTX 4090, one bid by user 2)."""
    return json.loads((FIXTURES / "prod_6K80i2Tyvm_1735176176.json").read_text())


@pytest.fixture
def fixture_json() -> Callable[[str], Any]:
    return lambda name: json.loads((FIXTURES / name).read_text())


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    with open_database(db_url, writer=True) as db:
        yield db


@pytest.fixture
def ingester(database: Database) -> SnapshotIngester:
    return SnapshotIngester(database.sessions)


def encode(snapshot: Any) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode()


@pytest.fixture
def record(ingester: SnapshotIngester) -> Callable[..., IngestResult]:
    """``record(snapshot, minute, **ingest_kwargs)``: ingest at ``T0 + 60 * minute``."""

    def _record(snapshot: Any, minute: int = 0, *, raw: bytes | None = None,
                **kwargs: Any) -> IngestResult:
        when = T0 + 60 * minute
        return ingester.ingest(encode(snapshot) if raw is None else raw, snapshot_time=when,
                               fetched_at=when + 5.0, source=f"prod_test_{when}.json", **kwargs)

    return _record


@pytest.fixture
def row_counts(database: Database) -> Callable[[], dict[str, int]]:
    """Rows per table, to see exactly what a step wrote."""

    def _counts() -> dict[str, int]:
        with database.sessions() as session:
            return {name: session.scalar(select(func.count()).select_from(table))
                    for name, table in Base.metadata.tables.items()}

    return _counts


@pytest.fixture
def changed() -> Callable[..., dict[str, Any]]:
    """``changed(snapshot, path, value)``: a deep copy with one value replaced, e.g.
    ``changed(s, ("40329", "bids", 0, "price"), 0.3)``; value ``DELETE`` removes the key."""

    def _changed(snapshot: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        out = copy.deepcopy(snapshot)
        target = out
        for part in path[:-1]:
            target = target[part]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return out

    return _changed


DELETE = object()


@pytest.fixture
def delete() -> object:
    return DELETE

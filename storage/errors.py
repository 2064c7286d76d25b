"""Errors a command shows its user as they are: each message says what is wrong and what to do."""

from __future__ import annotations


class StorageError(RuntimeError):
    """The database cannot be used as asked."""


class SchemaVersionError(StorageError):
    """The database's schema version is not the one this program reads and writes."""


def schema_too_new(database: str, found: int, known: int) -> SchemaVersionError:
    """A database written by a newer clore-bidder (``database``: its URL, password hidden)."""
    return SchemaVersionError(
        f"database {database} has schema version {found}, written by a newer clore-bidder; "
        f"this one knows versions up to {known}. Upgrade clore-bidder, or use another database.")


def schema_too_old(database: str, found: int, needed: int) -> SchemaVersionError:
    """A database a reader cannot use before a recording command upgrades it."""
    return SchemaVersionError(
        f"database {database} has schema version {found}; this clore-bidder needs "
        f"{needed}. Run a command that records (bidder record, bidder run or bidder import) "
        "once to upgrade it; its data is kept.")

"""Errors a command shows its user as they are: each message says what is wrong and what to do."""

from __future__ import annotations


class StorageError(RuntimeError):
    """The database cannot be used as asked."""


class SchemaVersionError(StorageError):
    """The database's schema version is not the one this program reads and writes."""

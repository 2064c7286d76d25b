"""Import saved GigaSPOT CDN snapshot files (``bidder import``).

A snapshot's time is in its file name (``prod_6K80i2Tyvm_1735176176.json``), as in the CDN URL.
Files are recorded in time order, whatever order they were named in, because the interval encoding
needs it; a file whose snapshot is already recorded is skipped, so importing a folder again only
adds what is new. A bad file is reported and skipped; the others are still imported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.gigaspot_ingest import IngestResult, SnapshotIngester
from storage.gigaspot_parse import SnapshotError, snapshot_time_from_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    path: Path
    result: IngestResult | None
    """What was recorded (``duplicate`` when it was already there); None when it failed."""
    error: str | None = None
    """Why the file was not recorded: names the file, and the machine and field when one is bad."""


def snapshot_files(paths: Iterable[Path]) -> list[Path]:
    """The named files and every ``*.json`` directly inside the named folders, in snapshot-time
    order (files without a time in their name first: they will be reported as bad)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])

    def time_in_name(path: Path) -> int:
        try:
            return snapshot_time_from_url(str(path))
        except SnapshotError:
            return -1

    return sorted(dict.fromkeys(files), key=time_in_name)


def import_snapshots(files: Iterable[Path], ingester: SnapshotIngester) -> Iterator[ImportOutcome]:
    """Record each file, one transaction each; yield what happened to it as it happens.

    ``fetched_at`` is the file's modification time: the best record of when it was downloaded.
    """
    for path in files:
        try:
            snapshot_time = snapshot_time_from_url(str(path))
            raw = path.read_bytes()
            result = ingester.ingest(raw, snapshot_time=snapshot_time,
                                     fetched_at=path.stat().st_mtime, source=str(path))
        except SnapshotError as err:
            outcome = ImportOutcome(path, None, str(err))
        except OSError as err:
            outcome = ImportOutcome(path, None, f"snapshot {path}: cannot read it: {err.strerror}")
        else:
            outcome = ImportOutcome(path, result)
        if outcome.error is not None:
            log.error("%s", outcome.error)
        yield outcome

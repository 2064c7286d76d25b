"""Import saved GigaSPOT CDN snapshot files (``bidder import``).

A snapshot's time is in its file name (``prod_6K80i2Tyvm_1735176176.json``), as in the CDN URL.
Files are recorded in time order, whatever order they were named in, because the interval encoding
needs it; a file whose snapshot is already recorded is skipped, so importing a folder again only
adds what is new. A bad file is reported and skipped; the others are still imported.

CDN files carry no rate. Saved ``get_gigaspot`` replies among the imported files (small JSON
objects with ``v1_snapshot_url``, as the API answered them) give their ``clore_price``, creation
fees and user id to the snapshots from their own one on, up to the next reply; ``--clore-usd``
gives a rate to the snapshots no reply covers.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from bidder.api.models import GigaspotInfo
from storage.gigaspot_ingest import IngestResult, SnapshotIngester
from storage.gigaspot_parse import SnapshotError, snapshot_time_from_url

REPLY_MAX_BYTES = 1 << 20
"""A ``get_gigaspot`` reply is a few hundred bytes; only files this small are looked into."""


class ImportInputError(ValueError):
    """The paths to import cannot be used as given (missing, empty folder, unreadable reply):
    one line, exit code 2, before any database is opened."""


@dataclass(frozen=True, slots=True)
class SavedReply:
    """A saved ``get_gigaspot`` reply: what the CDN file of ``snapshot_time`` came with."""

    path: Path
    snapshot_time: int
    info: GigaspotInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    path: Path
    result: IngestResult | None
    """What was recorded (``duplicate`` when it was already there); None when it failed."""
    error: str | None = None
    """Why the file was not recorded: names the file, and the machine and field when one is bad."""


def import_files(paths: Iterable[Path]) -> list[Path]:
    """The named files and every ``*.json`` directly inside the named folders. A path that does
    not exist, or a folder without ``*.json`` files, is an ``ImportInputError``."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ImportInputError(f"{path}: the folder has no *.json files to import")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise ImportInputError(f"{path}: no such file or folder")
    return files


def split_replies(files: Iterable[Path]) -> tuple[list[Path], list[SavedReply]]:
    """Saved ``get_gigaspot`` replies apart from the snapshot files, replies in time order. A
    small file that is a JSON object with ``v1_snapshot_url`` is a reply."""
    snapshots: list[Path] = []
    replies: list[SavedReply] = []
    for path in files:
        reply = _saved_reply(path)
        if reply is None:
            snapshots.append(path)
        else:
            replies.append(reply)
    return snapshots, sorted(replies, key=lambda r: r.snapshot_time)


def _saved_reply(path: Path) -> SavedReply | None:
    try:
        if path.stat().st_size > REPLY_MAX_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # reported when it is imported as a snapshot
    if not (isinstance(data, dict) and "v1_snapshot_url" in data):
        return None
    try:
        info = GigaspotInfo.model_validate(data)
        snapshot_time = snapshot_time_from_url(info.v1_snapshot_url)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(map(str, first["loc"]))
        raise ImportInputError(f"{path}: a get_gigaspot reply, but {field}: {first['msg']}") \
            from None
    except SnapshotError as err:
        raise ImportInputError(f"{path}: a get_gigaspot reply whose v1_snapshot_url: "
                               f"{err.message}") from None
    if info.clore_price is not None and not info.clore_price > 0:
        raise ImportInputError(f"{path}: clore_price {info.clore_price} is not a positive rate")
    return SavedReply(path, snapshot_time, info)


@dataclass(frozen=True, slots=True)
class SnapshotRates:
    """What each imported snapshot is recorded with: the newest saved reply at or before its time,
    else ``clore_usd`` (the user's rate) alone."""

    replies: Sequence[SavedReply] = ()
    clore_usd: float | None = None

    def for_time(self, snapshot_time: int) -> dict[str, object]:
        times = [r.snapshot_time for r in self.replies]
        i = bisect.bisect_right(times, snapshot_time) - 1
        if i < 0:
            return {"clore_price": self.clore_usd}
        info = self.replies[i].info
        return {"clore_price": info.clore_price if info.clore_price is not None else self.clore_usd,
                "creation_fees": dict(info.creation_fees), "my_user_id": info.my_user_id,
                "url": info.v1_snapshot_url if self.replies[i].snapshot_time == snapshot_time
                else None}


def in_time_order(files: Iterable[Path]) -> list[Path]:
    """Snapshot files in snapshot-time order, each once (files without a time in their name
    first: they will be reported as bad)."""

    def time_in_name(path: Path) -> int:
        try:
            return snapshot_time_from_url(str(path))
        except SnapshotError:
            return -1

    return sorted(dict.fromkeys(files), key=time_in_name)


def import_snapshots(files: Iterable[Path], ingester: SnapshotIngester,
                     rates: SnapshotRates | None = None) -> Iterator[ImportOutcome]:
    """Record each file, one transaction each; yield what happened to it as it happens.
    ``rates`` says what rate, fees and user id each snapshot is recorded with.

    ``fetched_at`` is the file's modification time: the best record of when it was downloaded.
    """
    for path in files:
        try:
            snapshot_time = snapshot_time_from_url(str(path))
            raw = path.read_bytes()
            result = ingester.ingest(raw, snapshot_time=snapshot_time,
                                     fetched_at=path.stat().st_mtime, source=str(path),
                                     **(rates or SnapshotRates()).for_time(snapshot_time))
        except SnapshotError as err:
            outcome = ImportOutcome(path, None, str(err))
        except OSError as err:
            outcome = ImportOutcome(path, None, f"snapshot {path}: cannot read it: {err.strerror}")
        else:
            outcome = ImportOutcome(path, result)
        if outcome.error is not None:
            log.error("%s", outcome.error)
        yield outcome

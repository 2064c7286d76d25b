"""The market poller: asks the exchange what the market looks like and records it.

Three polls, each a job of its own (``bidder record`` schedules them; ``bidder run`` too):

- ``poll_gigaspot``: ``get_gigaspot``, and the CDN snapshot only when its URL changed and the
  snapshot is not recorded yet;
- ``poll_spot_round``: a few ``spot_marketplace`` calls, planned by ``SpotWatchList`` (our orders'
  servers first, then the spot targets' candidates round robin);
- ``poll_marketplace``: the ``marketplace`` listing, where spot candidates come from.

Every request goes through the shared ``CloreClient`` at poll priority, so the rate limiter serves
the bot's cancels, edits and creates first. Each poll records what it got in its own transaction.
A poll never raises for what the market or the database may do (refusals, timeouts, bad snapshots,
a locked database): it logs one line naming what failed and says so in its result; the next run
tries again. Between two requests a poll checks ``stop``, so a shutdown waits for one call at most.

Routine successes are folded: the first GigaSPOT snapshot and the first listing are logged at INFO,
the next ones at DEBUG, and every ``[monitor] log_summary_interval`` seconds one INFO line sums up
what was recorded since, so that what matters stands out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bidder.api import (
    CloreClient,
    CloreError,
    FieldError,
    InvalidInput,
    InvalidReply,
    SnapshotNotFound,
)
from bidder.api.models import GigaspotInfo
from bidder.clock import Clock
from bidder.config import Config
from bidder.watchlist import SpotWatchList
from storage.gigaspot_ingest import IngestResult, SnapshotIngester
from storage.gigaspot_parse import SnapshotError, snapshot_time_from_url
from storage.models import GigaspotSnapshot
from storage.spot_record import MarketplaceResult as ListingResult
from storage.spot_record import record_marketplace, record_spot_poll

log = logging.getLogger(__name__)

GigaspotOutcome = Literal["recorded", "unchanged", "already_recorded", "rejected", "not_found",
                          "failed", "stopped"]

_SERVER_FAULTS = (InvalidInput, FieldError, InvalidReply, ValueError)
"""Failures of one server's ``spot_marketplace`` poll that say nothing about the next server's
(a refused id, an odd reply, a reply storage will not record): the round goes on."""


@dataclass(frozen=True, slots=True)
class GigaspotPollResult:
    outcome: GigaspotOutcome
    """``recorded``: a new snapshot was downloaded and recorded. ``unchanged``: same URL as last
    time, nothing downloaded. ``already_recorded``: a new URL whose snapshot the database already
    holds (e.g. after a restart), nothing downloaded. ``rejected``: a bad snapshot (or URL); nothing
    recorded, the URL is not fetched again. ``not_found``: the CDN answered 404; the next poll asks
    ``get_gigaspot`` again. ``failed``: an API, network or database fault; the next poll retries.
    ``stopped``: the shutdown came first."""
    url: str | None = None
    snapshot_time: int | None = None
    ingest: IngestResult | None = None
    """What was recorded (``recorded`` only)."""
    error: str | None = None
    """The one-line reason (``rejected``, ``not_found``, ``failed``)."""


@dataclass(frozen=True, slots=True)
class SpotRoundResult:
    planned: tuple[int, ...]
    """The servers this round meant to poll, in order."""
    polled: tuple[int, ...]
    """The servers whose reply was recorded."""
    failed: tuple[int, ...] = ()
    """The servers whose poll failed on its own (the round went on)."""
    error: str | None = None
    """Why the round ended early (an API, network or database fault); the rest was not polled."""
    stopped: bool = False
    """The shutdown ended the round early."""


@dataclass(frozen=True, slots=True)
class MarketplaceResult:
    listing: ListingResult | None
    """What was recorded; ``None`` when the poll failed or was stopped."""
    error: str | None = None
    stopped: bool = False


@dataclass(slots=True)
class _Tally:
    """Routine poll results since the last summary line."""

    snapshots: int = 0
    machines: int = 0
    """In the last snapshot."""
    spot_rounds: int = 0
    spot_polled: int = 0
    spot_failed: int = 0
    listings: int = 0
    servers: int = 0
    """In the last listing."""

    def line(self, seconds: float) -> str:
        return (f"market data in the last {seconds / 60:.0f} min: {self.snapshots} GigaSPOT "
                f"snapshots recorded (last: {self.machines} machines), {self.spot_polled} spot "
                f"polls in {self.spot_rounds} rounds ({self.spot_failed} failed), "
                f"{self.listings} marketplace listings (last: {self.servers} servers)")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class MarketPoller:
    """Polls the market through ``client`` and records it through ``sessions``.

    ``own_servers`` gives the spot servers of our live orders (polled first, every round);
    ``watch_all_spot`` makes every listed spot server a candidate instead of the spot targets'
    matches (the recorder does this when no spot target is configured). Each poll method may run in
    its own thread, but one call of a method at a time (the scheduler's ``max_instances=1``).
    """

    def __init__(
        self,
        client: CloreClient,
        sessions: sessionmaker[Session],
        clock: Clock,
        config: Config,
        *,
        ingester: SnapshotIngester | None = None,
        own_servers: Callable[[], Sequence[int]] = lambda: (),
        stop: threading.Event | None = None,
        watch_all_spot: bool = False,
    ) -> None:
        self._client = client
        self._sessions = sessions
        self._clock = clock
        self._poller = config.poller
        self._ingester = ingester if ingester is not None else SnapshotIngester(sessions)
        self._own_servers = own_servers
        self._stop = stop if stop is not None else threading.Event()
        self._watch = SpotWatchList(config.targets, watch_all=watch_all_spot)
        self._done_url: str | None = None
        """The last snapshot URL dealt with for good (recorded, already there or rejected)."""
        self._my_user_id: int | None = None
        self._summary_every = config.monitor.log_summary_interval
        self._tally = _Tally()
        self._tally_since = clock.now()
        self._tally_lock = threading.Lock()
        self._logged_first: set[str] = set()

    def _routine(self, kind: str, **counts: int) -> int:
        """Count a routine success; log the summary when its interval has passed. Returns the
        level for the success's own line: INFO the first time of its kind, DEBUG after."""
        now = self._clock.now()
        line = None
        with self._tally_lock:
            for name, value in counts.items():
                if name in ("machines", "servers"):
                    setattr(self._tally, name, value)
                else:
                    setattr(self._tally, name, getattr(self._tally, name) + value)
            if now - self._tally_since >= self._summary_every:
                line = self._tally.line(now - self._tally_since)
                for f in fields(_Tally):
                    if f.name not in ("machines", "servers"):  # "last" values stay known
                        setattr(self._tally, f.name, 0)
                self._tally_since = now
            first = kind not in self._logged_first
            self._logged_first.add(kind)
        if line is not None:
            log.info("%s", line)
        return logging.INFO if first else logging.DEBUG

    @property
    def my_user_id(self) -> int | None:
        """Our user id on the exchange (GigaSPOT bids' ``owner``), once ``get_gigaspot`` said it."""
        return self._my_user_id

    # --- GigaSPOT --------------------------------------------------------------------------------

    def poll_gigaspot(self) -> GigaspotPollResult:
        """Ask ``get_gigaspot``; download and record the snapshot if its URL is new."""
        if self._stop.is_set():
            return GigaspotPollResult("stopped")
        try:
            info = self._client.get_gigaspot()
        except CloreError as err:
            return self._gigaspot_failed("failed", None, f"get_gigaspot failed: {_one_line(err)}")
        self._my_user_id = info.my_user_id
        url = info.v1_snapshot_url
        if url == self._done_url:
            return GigaspotPollResult("unchanged", url)
        try:
            snapshot_time = snapshot_time_from_url(url)
            if self._is_recorded(snapshot_time):
                self._done_url = url
                return GigaspotPollResult("already_recorded", url, snapshot_time)
            if self._stop.is_set():
                return GigaspotPollResult("stopped", url, snapshot_time)
            result = self._download_and_ingest(info, snapshot_time)
        except SnapshotNotFound:
            message = str(SnapshotError(url, None, None, "not on the CDN (HTTP 404); "
                                        "get_gigaspot will be asked for the current URL"))
            return self._gigaspot_failed("not_found", url, message)
        except SnapshotError as err:
            self._done_url = url  # the same URL would give the same bad file
            return self._gigaspot_failed("rejected", url, f"{err}; nothing recorded from it")
        except (CloreError, SQLAlchemyError) as err:
            return self._gigaspot_failed("failed", url, f"snapshot {url}: {_one_line(err)}")
        self._done_url = url
        level = self._routine("gigaspot", snapshots=1, machines=result.machines)
        log.log(level, "recorded GigaSPOT snapshot %s: %d machines (new versions: %d states, "
                "%d bids)", url, result.machines, result.new_states, result.new_bids)
        return GigaspotPollResult("recorded", url, snapshot_time, result)

    def _is_recorded(self, snapshot_time: int) -> bool:
        with self._sessions() as session:
            found = session.scalar(select(GigaspotSnapshot.id)
                                   .where(GigaspotSnapshot.time == snapshot_time))
        return found is not None

    def _download_and_ingest(self, info: GigaspotInfo, snapshot_time: int) -> IngestResult:
        url = info.v1_snapshot_url
        raw = self._client.fetch_snapshot(url)
        return self._ingester.ingest(
            raw, snapshot_time=snapshot_time, fetched_at=self._clock.now(), source=url, url=url,
            clore_price=info.clore_price, creation_fees=dict(info.creation_fees),
            my_user_id=info.my_user_id)

    @staticmethod
    def _gigaspot_failed(outcome: GigaspotOutcome, url: str | None,
                         message: str) -> GigaspotPollResult:
        log.error("GigaSPOT poll: %s", message)
        return GigaspotPollResult(outcome, url, error=message)

    # --- spot ------------------------------------------------------------------------------------

    def poll_spot_round(self) -> SpotRoundResult:
        """Poll up to ``spot_polls_per_round`` servers: our own orders' first, then candidates."""
        slots = self._poller.spot_polls_per_round
        try:
            own = list(dict.fromkeys(int(s) for s in self._own_servers()))
            with self._sessions() as session:
                plan = tuple(self._watch.plan(session, own, slots))
        except SQLAlchemyError as err:
            message = f"cannot plan the spot round: {_one_line(err)}"
            log.error("spot round: %s", message)
            return SpotRoundResult((), (), error=message)
        polled: list[int] = []
        failed: list[int] = []
        for server_id in plan:
            if self._stop.is_set():
                return SpotRoundResult(plan, tuple(polled), tuple(failed), stopped=True)
            try:
                reply = self._client.spot_marketplace(server_id)
                with self._sessions.begin() as session:
                    record_spot_poll(session, server_id, self._clock.now(), reply)
            except _SERVER_FAULTS as err:
                log.warning("spot poll of server %d failed: %s", server_id, _one_line(err))
                failed.append(server_id)
                continue
            except (CloreError, SQLAlchemyError) as err:
                message = f"spot poll of server {server_id} failed: {_one_line(err)}"
                log.error("spot round ended early (%d of %d polled): %s", len(polled), len(plan),
                          message)
                return SpotRoundResult(plan, tuple(polled), tuple(failed), error=message)
            polled.append(server_id)
        self._routine("spot", spot_rounds=1, spot_polled=len(polled), spot_failed=len(failed))
        log.debug("spot round: %d servers polled, %d failed", len(polled), len(failed))
        return SpotRoundResult(plan, tuple(polled), tuple(failed))

    # --- marketplace -----------------------------------------------------------------------------

    def poll_marketplace(self) -> MarketplaceResult:
        """Record the ``marketplace`` listing (spot discovery)."""
        if self._stop.is_set():
            return MarketplaceResult(None, stopped=True)
        try:
            reply = self._client.marketplace()
            with self._sessions.begin() as session:
                listing = record_marketplace(session, self._clock.now(), reply)
        except (CloreError, SQLAlchemyError, ValueError) as err:
            message = f"marketplace poll failed: {_one_line(err)}"
            log.error("%s", message)
            return MarketplaceResult(None, message)
        level = self._routine("listing", listings=1, servers=listing.servers)
        log.log(level, "recorded marketplace listing: %d servers (%d new or changed, %d ended)",
                listing.servers, listing.changed, listing.closed)
        return MarketplaceResult(listing)

"""Parse and validate a GigaSPOT CDN snapshot, fast, exactly as strictly as the API models.

``bidder.api.models.SnapshotMachine`` is the authority on what a valid machine is. Validating all
10,000 machines with pydantic takes about a second on a small machine, so each machine first goes
through a plain-Python check that accepts only values of exactly the expected type (an ``int``
where an integer is due, a ``bool`` where a flag is due, ...), which pydantic would accept
unchanged. Anything else (a missing field, a string, a float where an integer is due) is handed to
pydantic for that machine alone: pydantic either converts it as it would anyway, or rejects it
with its own message, reported with the machine id and the field path. A machine's GPU list is
checked only when it differs from the one already validated for that machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_core import from_json

from bidder.api.models import SnapshotMachine

EARLIEST_SNAPSHOT_TIME = 1_577_836_800  # 2020-01-01
LATEST_SNAPSHOT_TIME = 4_102_444_800  # 2100-01-01
_TIME_IN_NAME = re.compile(r"_(\d+)\.json$")


class SnapshotError(ValueError):
    """A snapshot that cannot be recorded: names the snapshot, and the machine and field when the
    fault is in one machine. Raised by the parser and the ingester; the poller can raise it too
    (e.g. for a CDN file that is missing)."""

    def __init__(self, source: str, machine_id: int | None, field: str | None, message: str) -> None:
        self.source = source
        self.machine_id = machine_id
        self.field = field
        self.message = message
        parts = [f"snapshot {source}"]
        if machine_id is not None:
            parts.append(f"machine {machine_id}")
        if field:
            parts.append(field)
        super().__init__(": ".join([*parts, message]))


def format_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def snapshot_time_from_url(url_or_name: str) -> int:
    """The snapshot time (UNIX seconds) in a CDN URL or file name ending in ``_<unix>.json``."""
    path = urlsplit(url_or_name).path if "://" in url_or_name else url_or_name
    match = _TIME_IN_NAME.search(path)
    if match is None:
        raise SnapshotError(url_or_name, None, None, "the name does not end in _<unix time>.json")
    value = int(match.group(1))
    if not EARLIEST_SNAPSHOT_TIME <= value < LATEST_SNAPSHOT_TIME:
        raise SnapshotError(url_or_name, None, None,
                            f"{value} in the name is not a plausible UNIX time in seconds")
    return value


class Facts(NamedTuple):
    """What a machine is. ``gpus`` is the validated list as the snapshot gave it."""

    cpu: str | None
    cores: int | None
    threads: int | None
    ram: float | None
    cuda: str | None
    cc: str | None
    host: int | None
    gpus: list[dict[str, Any]]


class State(NamedTuple):
    online: bool
    on_demand_rented: bool
    working_properly: bool
    reliability: float
    min_bid: float
    max_rental_length: int
    energy_price: float


class Bid(NamedTuple):
    owner: int
    active: bool
    price: float
    currency: str
    pl: float
    to_cache: bool | None
    cached: bool | None


@dataclass(frozen=True, slots=True)
class ParsedSnapshot:
    """A validated snapshot, ordered by machine id."""

    facts: dict[int, Facts]
    states: dict[int, State]
    bids: dict[tuple[int, int], Bid]
    """(machine id, bid id) -> bid"""


class _Unusual(Exception):
    """A value the quick check does not accept as it is: pydantic decides."""


def _is_range(value: Any) -> bool:
    if type(value) is not list or len(value) != 2:
        return False
    low, high = value
    return (type(low) is int or type(low) is float) and (type(high) is int or type(high) is float)


def _gpus_are_plain(gpus: Any) -> bool:
    if type(gpus) is not list:
        return False
    for gpu in gpus:
        if type(gpu) is not dict or type(gpu.get("model")) is not str or not _is_range(gpu.get("pl")):
            return False
        if gpu["pl"][0] < 0 or gpu["pl"][1] < 0:  # impossible: pydantic names the field
            return False
        get = gpu.get
        for value in (get("mem_lock"), get("core_lock"), get("mem_offset"), get("core_offset")):
            if value is not None and not _is_range(value):
                return False
    return True


def _plain_machine(machine: Any, known: Facts | None) -> tuple[Facts, State, list[tuple[int, Bid]]]:
    """The quick check: raises ``_Unusual`` (or ``KeyError``) at the first value it does not accept
    as it is. Written out flat: it runs 10,000 times per snapshot, and its bid loop 30,000 times."""
    if type(machine) is not dict:
        raise _Unusual
    get = machine.get
    cpu, cores, threads, ram = get("cpu"), get("cores"), get("threads"), get("ram")
    cuda, cc, host, gpus = get("cuda"), get("cc"), get("host"), machine["gpus"]
    if ((cpu is not None and type(cpu) is not str) or (cores is not None and type(cores) is not int)
            or (threads is not None and type(threads) is not int)
            or (ram is not None and type(ram) is not float and type(ram) is not int)
            or (cuda is not None and type(cuda) is not str) or (cc is not None and type(cc) is not str)
            or (host is not None and type(host) is not int)):
        raise _Unusual
    if known is not None and known == (cpu, cores, threads, ram, cuda, cc, host, gpus):
        facts = known
    elif _gpus_are_plain(gpus):
        facts = Facts(cpu, cores, threads, ram, cuda, cc, host, gpus)
    else:
        raise _Unusual
    online, rented, working = machine["online"], machine["on_demand_rented"], machine["working_properly"]
    mrl, reliability = machine["max_rental_length"], machine["reliability"]
    min_bid, energy_price = machine["min_bid"], machine["energy_price"]
    if (type(online) is not bool or type(rented) is not bool or type(working) is not bool
            or type(mrl) is not int
            or (type(reliability) is not float and type(reliability) is not int)
            or (type(min_bid) is not float and type(min_bid) is not int)
            or (type(energy_price) is not float and type(energy_price) is not int)
            or not 0 <= reliability <= 1 or min_bid < 0):  # impossible: pydantic names the field
        raise _Unusual
    state = State(online, rented, working, reliability, min_bid, mrl, energy_price)
    machine_bids = machine["bids"]
    if type(machine_bids) is not list:
        raise _Unusual
    bids: list[tuple[int, Bid]] = []
    for bid in machine_bids:
        if type(bid) is not dict:
            raise _Unusual
        owner, bid_id, active, price = bid["owner"], bid["id"], bid["active"], bid["price"]
        currency, pl = bid["currency"], bid["pl"]
        to_cache, cached = bid.get("to_cache"), bid.get("cached")
        if (type(owner) is not int or type(bid_id) is not int or type(active) is not bool
                or (type(price) is not float and type(price) is not int)
                or type(currency) is not str
                or (type(pl) is not int and type(pl) is not float)
                or (to_cache is not None and type(to_cache) is not bool)
                or (cached is not None and type(cached) is not bool)
                or price < 0 or pl < 0):
            raise _Unusual
        bids.append((bid_id, Bid(owner, active, price, currency, pl, to_cache, cached)))
    return facts, state, bids


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validated(source: str, machine_id: int, machine: Any) -> dict[str, Any]:
    """The machine as pydantic reads it (converted), or a ``SnapshotError`` naming the field."""
    try:
        model = SnapshotMachine.model_validate(machine)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        raise SnapshotError(source, machine_id, _field_path(first["loc"]), first["msg"]) from None
    return model.model_dump(exclude_unset=True)  # the snapshot's own shape, values converted


def parse_snapshot(raw: bytes, source: str, known_facts: Mapping[int, Facts] | None = None
                   ) -> ParsedSnapshot:
    """Validate a CDN snapshot. ``known_facts`` (machine id -> facts already validated) lets
    unchanged GPU lists skip their check. Raises ``SnapshotError`` at the first fault."""
    known_facts = known_facts or {}
    try:
        data = from_json(raw, allow_inf_nan=False, cache_strings="all")
    except ValueError as err:
        raise SnapshotError(source, None, None, f"not valid JSON (truncated?): {err}") from None
    if type(data) is not dict:
        raise SnapshotError(source, None, None,
                            f"expected a JSON object of machines, got {type(data).__name__}")
    machines: list[tuple[int, Any]] = []
    for key, machine in data.items():
        if not (key.isascii() and key.isdigit()):
            raise SnapshotError(source, None, None, f"machine id {key!r} is not an integer")
        machines.append((int(key), machine))
    machines.sort(key=lambda item: item[0])
    facts: dict[int, Facts] = {}
    states: dict[int, State] = {}
    bids: dict[tuple[int, int], Bid] = {}
    for machine_id, machine in machines:
        if machine_id in states:
            raise SnapshotError(source, machine_id, None, "the machine is listed twice")
        try:
            parsed = _plain_machine(machine, known_facts.get(machine_id))
        except (_Unusual, KeyError):
            parsed = _plain_machine(_validated(source, machine_id, machine), None)
        facts[machine_id], states[machine_id], machine_bids = parsed
        for bid_id, bid in machine_bids:
            key = (machine_id, bid_id)
            if key in bids:
                raise SnapshotError(source, machine_id, "bids", f"bid {bid_id} is listed twice")
            bids[key] = bid
    return ParsedSnapshot(facts, states, bids)

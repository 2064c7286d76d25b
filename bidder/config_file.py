"""Finding the database from a config file without validating all of it (no pydantic).

``bidder status --config`` runs every minute under a monitor: it needs only the database URL, so it
reads the TOML with ``tomllib`` and checks just the keys that locate the database (``data_dir``,
``[storage] url``). ``bidder.config.Config.storage_url`` resolves the URL through the same function
(``storage_url``), so defaults, environment and per-mode file names have one definition.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

CLORE = "CLORE-Blockchain"

Mode = Literal["live", "dry-run", "sim"]
"""How the bot runs: on Clore.ai, on Clore.ai sending nothing that changes orders, or on the
built-in simulated market. Each mode has its own default database."""

DATABASE_FILES: dict[str, str] = {"live": "bidder.db", "dry-run": "bidder-dry-run.db",
                                  "sim": "bidder-sim.db"}
"""The default database file per mode, so a dry run or a simulation never mixes its orders with
real ones."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file's TOML document; ``ConfigError`` (one line) when unreadable or not TOML."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {p} is not UTF-8 text: {err.reason}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {p} is not valid TOML: {err}") from None


def resolved_data_dir(data_dir: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the default databases live: ``data_dir`` when set, else ``$XDG_DATA_HOME/clore-bidder``
    or ``~/.local/share/clore-bidder``."""
    if data_dir is not None:
        return data_dir.expanduser()
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clore-bidder"


def storage_url(url: str | None, data_dir: Path | None, mode: Mode = "live",
                environ: Mapping[str, str] | None = None) -> str:
    """The database URL: ``url`` (``[storage] url``) when set, else a SQLite file in the data
    directory named for ``mode`` (``bidder.db``, ``bidder-dry-run.db``, ``bidder-sim.db``)."""
    if url:
        return url
    return f"sqlite:///{resolved_data_dir(data_dir, environ) / DATABASE_FILES[mode]}"


def storage_url_of_file(path: str | Path | None, mode: Mode = "live",
                        environ: Mapping[str, str] | None = None) -> str:
    """The database URL a config file (``None``: the built-in defaults) gives for ``mode``.

    Only ``data_dir`` and ``[storage]`` are checked (as ``Config`` checks them: a string path, a
    string URL, no other key in ``[storage]``); the rest of the file is left to the commands that
    use it, so a monitor's ``bidder status`` needs no pydantic."""
    if path is None:
        return storage_url(None, None, mode, environ)
    data = read_toml(path)
    source = f"invalid configuration in {Path(path)}"
    data_dir = data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError(f"{source}: data_dir: expected a path (a string), got "
                          f"{type(data_dir).__name__}")
    storage = data.get("storage", {})
    if not isinstance(storage, dict):
        raise ConfigError(f"{source}: storage: expected a table ([storage]), got "
                          f"{type(storage).__name__}")
    extra = sorted(set(storage) - {"url"})
    if extra:
        raise ConfigError(f"{source}: storage.{extra[0]}: extra inputs are not permitted")
    url = storage.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{source}: storage.url: expected a URL (a string), got "
                          f"{type(url).__name__}")
    return storage_url(url, None if data_dir is None else Path(data_dir), mode, environ)

"""Logging set-up with secret redaction, an optional rotating log file and JSON lines.

The API key must never reach a log. The client never logs it; this filter is the second wall: any
record whose text contains a registered secret has it replaced before any handler sees it.

``--log-file PATH`` adds a file that rotates by size (``LOG_FILE_BYTES``, keeping
``LOG_FILE_BACKUPS`` old files beside it); ``--log-format json`` writes one JSON object per line
(``time``, ``level``, ``logger``, ``message``, ``exception``) for log shippers, on every handler.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

REDACTED = "**********"
LOG_FILE_BYTES = 10 * 1024 * 1024
"""A log file rotates when it would grow past this size."""
LOG_FILE_BACKUPS = 5
"""Rotated log files kept (``PATH.1`` ... ``PATH.5``)."""
LogFormat = Literal["text", "json"]


class RedactingFilter(logging.Filter):
    """Replaces each secret in a record's message and arguments with ``**********``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        text = record.getMessage()
        if any(s in text for s in self._secrets):
            for s in self._secrets:
                text = text.replace(s, REDACTED)
            record.msg, record.args = text, None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            if any(s in exc_text for s in self._secrets):
                for s in self._secrets:
                    exc_text = exc_text.replace(s, REDACTED)
                record.exc_info, record.exc_text = None, exc_text
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers (UTC ISO time)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def log_options(args: object) -> dict[str, object]:
    """``setup_logging``'s ``file`` and ``fmt`` from the CLI's ``--log-file`` and ``--log-format``."""
    return {"file": getattr(args, "log_file", None), "fmt": getattr(args, "log_format", "text")}


def setup_logging(level: str = "INFO", secrets: Iterable[str] = (), *,
                  file: str | Path | None = None, fmt: LogFormat | str = "text") -> None:
    """Configure the root logger once for a CLI run: stderr, and ``file`` (rotated by size) when
    given; every handler gets the redacting filter and the ``fmt`` format."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    secrets = list(secrets)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if file is not None:
        path = Path(file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(
                path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"))
        except OSError as err:
            from bidder.config_file import ConfigError

            raise ConfigError(f"--log-file {path}: cannot write there: "
                              f"{err.strerror or err}") from None
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    for handler in handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter(secrets))
        root.addHandler(handler)
    # httpx logs every request URL at INFO; keep it at WARNING so polls do not flood the log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Apprise's own lines may name a service's URL; the alerts module reports failures itself
    logging.getLogger("apprise").setLevel(logging.ERROR)

"""Logging set-up with secret redaction.

The API key must never reach a log. The client never logs it; this filter is the second wall: any
record whose text contains a registered secret has it replaced before any handler sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

REDACTED = "**********"


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


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for a CLI run; every handler gets the redacting filter."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # httpx logs every request URL at INFO; keep it at WARNING so polls do not flood the log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)

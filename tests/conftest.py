"""Shared test configuration. Component tests keep their own fixtures in their folders."""

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_logging():
    """CLI commands configure the root logger for their process; undo that after every test so
    one command's handlers never leak into the next test (or swallow pytest's log capture)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quietened = {name: logging.getLogger(name).level for name in ("httpx", "apscheduler")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quietened.items():  # setup_logging quietens these; a later test may not
        logging.getLogger(name).setLevel(old)

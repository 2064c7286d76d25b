"""The ``bidder`` sub-commands, one module each (``HELP``, ``add_arguments``, ``run``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def database_url(text: str) -> str:
    """An argparse type: a database URL as it is; anything else is the path of a SQLite file."""
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def usd_per_clore(text: str) -> float:
    """An argparse type: a rate in USD per CLORE (positive, finite)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of USD per CLORE, got {text!r}")
    return value


def strategy_problem(targets: Iterable[Any]) -> str | None:
    """What is wrong with the first target whose strategy cannot be loaded with its parameters
    (an unknown strategy, a misspelt parameter), or None. Commands ask before they touch a
    database, so bad input creates, migrates and deletes nothing."""
    from strategies.registry import StrategyError, load_strategy

    for i, target in enumerate(targets):
        try:
            load_strategy(target.strategy, target.strategy_params)
        except StrategyError as err:
            return f"targets[{i}] ({target.name}): {err}"
    return None

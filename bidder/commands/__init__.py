"""The ``bidder`` sub-commands, one module each (``HELP``, ``add_arguments``, ``run``)."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value

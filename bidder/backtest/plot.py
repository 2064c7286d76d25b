"""A PNG of price and holdings over time, per target (matplotlib, an optional extra)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import numpy as np

from bidder.backtest.oracle import OracleResult
from bidder.backtest.report import write_atomically
from bidder.backtest.runner import RunRecord
from bidder.config import TargetConfig

MAX_POINTS = 1500
INSTALL_HINT = "pip install 'clore-bidder[plot]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> ModuleType:
    """``matplotlib.pyplot`` on a file-only backend; ``PlotUnavailable`` when not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot(path: Path, runs: Sequence[RunRecord], targets: Sequence[TargetConfig],
         oracles: dict[str, OracleResult]) -> None:
    """Per target: price per GPU-day paid by each run against the oracle's for the whole target,
    and the units each run held against the target. Replay runs are solid, reactive dashed."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(2 * len(targets), 1, figsize=(11, 4.2 * len(targets)), sharex=True,
                             squeeze=False)
    times = runs[0].step_time
    every = max(1, len(times) // MAX_POINTS)
    when = [datetime.fromtimestamp(t, tz=timezone.utc) for t in times[::every]]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(r.variant.label for r in runs))
    for k, target in enumerate(targets):
        price_ax, held_ax = axes[2 * k][0], axes[2 * k + 1][0]
        oracle_price = oracles[target.name].full_per_unit
        if target.unit == "gpus":
            price_ax.plot(when, oracle_price[::every], color="black", linewidth=1.0,
                          label="oracle (whole target, knowing the future)")
        for run in runs:
            record = run.targets[target.name]
            colour = colours[labels.index(run.variant.label) % len(colours)]
            style = "-" if run.mode == "replay" else "--"
            with np.errstate(invalid="ignore", divide="ignore"):
                paid = np.where(record.held_gpus > 0, record.paid_per_day / record.held_gpus,
                                np.nan)
            name = f"{run.variant.label} ({run.mode})"
            price_ax.plot(when, paid[::every], style, color=colour, linewidth=1.2, label=name)
            held_ax.step(when, record.held_units[::every], style, color=colour, linewidth=1.2,
                         where="post", label=name)
        held_ax.axhline(target.count, color="black", linewidth=0.8, linestyle=":",
                        label="wanted")
        price_ax.set_ylabel(f"{target.currency} per GPU-day")
        price_ax.set_title(f"{target.name} ({target.market}): price paid")
        held_ax.set_ylabel(target.unit)
        held_ax.set_title(f"{target.name}: held")
        price_ax.legend(fontsize=7, loc="upper right")
        held_ax.legend(fontsize=7, loc="lower right")
        for ax in (price_ax, held_ax):
            ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

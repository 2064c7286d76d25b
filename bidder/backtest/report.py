"""The results for people (a table) and for machines (JSON), written atomically."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bidder.plain import plain

COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("cost", "cost", lambda v: f"{v:,.2f}"),
    ("cost_per_gpu_hour", "cost/GPU-h", lambda v: f"{v:.4f}"),
    ("availability", "avail", lambda v: f"{v:.1%}"),
    ("gaps", "gaps", str),
    ("gap_min", "gap min", lambda v: f"{v:.0f}"),
    ("time_to_acquire_min", "acquire min", lambda v: f"{v:.0f}"),
    ("preemptions_per_gpu_day", "preempt/GPU-d", lambda v: f"{v:.2f}"),
    ("overpay_mean", "overpay", lambda v: f"{v:.3f}"),
    ("overpay_p95", "overpay p95", lambda v: f"{v:.3f}"),
    ("regret", "regret", lambda v: f"{v:,.2f}"),
    ("oracle_full_cost", "oracle", lambda v: f"{v:,.2f}"),
    ("oracle_whole_servers_cost", "oracle whole", lambda v: f"{v:,.2f}"),
    ("oracle_whole_servers_gpu_hours", "whole GPU-h", lambda v: f"{v:,.1f}"),
    ("surplus_gpu_hours", "surplus GPU-h", lambda v: f"{v:,.1f}"),
    ("orders_created", "orders", str),
    ("rebuys_within_hour", "rebuys 1h", str),
    ("creation_fees", "creation fees", lambda v: f"{v:,.2f}"),
    ("api_calls", "calls", str),
    ("lowerings", "lowerings", str),
)


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt(value)


def table(metrics: Sequence[Mapping[str, Any]]) -> str:
    """One row per strategy, mode and target (costs in each target's order currency)."""
    header = ["strategy", "mode", "target", *(title for _, title, _ in COLUMNS)]
    rows = [[m["strategy"], m["mode"], t["target"], *(_cell(t[key], fmt) for key, _, fmt in COLUMNS)]
            for m in metrics for t in m["targets"]]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def as_json(metrics: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"settings": ..., "runs": [{"strategy", "mode", "targets": [...], "total": {...}}]}``."""
    return {"settings": dict(settings), "runs": [dict(m) for m in metrics]}


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: readers never see
    a half-written file, and a failure leaves nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    text = json.dumps(plain(document), indent=2, allow_nan=False)
    write_atomically(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))

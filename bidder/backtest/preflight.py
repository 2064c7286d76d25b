"""What a backtest must have before its numbers mean anything: the rates its rules need, and
candidate servers for each target.

Imported CDN files carry no rate. Without USD per CLORE, ``host_profit`` cannot rank a bid, and
without a USD rate for the order currency a USD cap or budget refuses every purchase, so the
backtest would report 0 % availability as if the strategies had failed. Here each need is
checked against the loaded history: a rate missing at every tick stops the backtest (the command
names it and how to give it); one missing at some ticks becomes a warning shown with the table and
in the JSON. A target no recorded server ever matched is reported instead of run. ``preflight``
is that check, for every command that backtests (``bidder backtest``, ``bidder optimize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bidder.backtest.data import History, facts_frame
from bidder.config import CLORE, Config, TargetConfig
from bidder.view import static_match



class PreflightError(ValueError):
    """The backtest cannot mean anything as asked; the message says why and what to do."""


def how_to_give(command: str) -> str:
    """How to give USD per CLORE to ``bidder <command>``."""
    return (f"give it with bidder {command} --clore-usd RATE, or record it with the snapshots "
            "(bidder import --clore-usd RATE, or saved get_gigaspot replies)")


@dataclass(frozen=True, slots=True)
class RateGap:
    currency: str
    """The currency whose USD rate is missing"""
    why: str
    """What needs it"""
    missing: int
    """Ticks without it"""
    ticks: int

    @property
    def everywhere(self) -> bool:
        return self.missing == self.ticks

    def message(self, command: str = "backtest") -> str:
        """What is missing where, and how to give it to ``bidder <command>``."""
        what = "USD per CLORE" if self.currency == CLORE else f"USD per {self.currency}"
        where = ("none was recorded in this range" if self.everywhere
                 else f"it is missing at {self.missing:,} of {self.ticks:,} ticks, where "
                      "no server is bought at a price that needs it")
        how = how_to_give(command) if self.currency == CLORE else \
            "the spot polls record it (currency_rates_in_usd)"
        return f"{self.why} needs {what}, and {where}: {how}"


def usd_rate_known(history: History, currency: str) -> np.ndarray:
    """Per tick: whether the backtest's frames know USD per unit of ``currency`` (the same
    lookup as ``MarketFrame.usd_rate``)."""
    spot = np.array([0 < history.rates_at(t).get(currency, np.nan) < np.inf
                     for t in range(history.n_ticks)], dtype=bool)
    if currency.upper() in ("USD", "USD-BLOCKCHAIN"):
        return np.ones(history.n_ticks, dtype=bool)
    if currency == CLORE:
        return spot | (np.isfinite(history.clore_usd) & (history.clore_usd > 0))
    return spot


def rate_gaps(history: History, config: Config, targets: Sequence[TargetConfig]) -> list[RateGap]:
    """Every rate a rule of these targets needs and the history lacks at some tick."""
    needs: dict[str, str] = {}
    if config.markets.gigaspot.allocation == "host_profit" and \
            any(t.market == "gigaspot" for t in targets):
        needs.setdefault(CLORE, 'the GigaSPOT allocation rule "host_profit" ([markets.gigaspot] '
                                "allocation)")
    for t in targets:
        if t.cap_currency not in (None, t.currency):
            needs.setdefault(t.currency, f"target {t.name!r} (a cap in {t.cap_currency})")
    budget = config.budget
    if budget.max_per_day is not None:
        for t in targets:
            if t.currency != budget.currency:
                needs.setdefault(t.currency, f"the budget in {budget.currency}")
        if budget.currency not in ("USD", *(t.currency for t in targets)):
            needs.setdefault(budget.currency, f"the budget in {budget.currency}")
    gaps = []
    for currency, why in needs.items():
        missing = int(np.count_nonzero(~usd_rate_known(history, currency)))
        if missing:
            gaps.append(RateGap(currency, why, missing, history.n_ticks))
    return gaps


def without_candidates(history: History, targets: Sequence[TargetConfig]) -> list[TargetConfig]:
    """The targets that no recorded server ever matched (hardware and place)."""
    empty = []
    for target in targets:
        data = history.markets.get(target.market)
        if data is None or data.n_servers == 0:
            empty.append(target)
            continue
        facts = data.facts
        rows = np.concatenate([np.arange(data.n_servers), facts.row])
        columns = {c: np.concatenate([facts.initial[c], facts.values[c]])
                   for c in ("gpus", "gpu_model", "country")}
        frame = facts_frame(target.market, data.server_id[rows], columns["gpus"],
                            columns["gpu_model"], columns["country"])
        if not static_match(frame, target).any():
            empty.append(target)
    return empty


def preflight(history: History, config: Config, targets: Sequence[TargetConfig], *,
              command: str) -> tuple[list[TargetConfig], list[str]]:
    """The targets that can be backtested on ``history`` and the warnings to show with the
    results (the table and the JSON). A rate a rule needs and the range lacks entirely, or no
    target with a candidate server, is a ``PreflightError`` naming it and (``command``: the
    ``bidder`` command asking) how to give it."""
    empty = without_candidates(history, targets)
    if len(empty) == len(targets):
        raise PreflightError("no recorded server ever matched " + "; ".join(
            f"target {t.name!r} ({describe_target(t)})" for t in empty) + ": nothing to backtest")
    warnings = [f"target {t.name!r} left out: no recorded server ever matched it "
                f"({describe_target(t)})" for t in empty]
    kept = [t for t in targets if t not in empty]
    gaps = rate_gaps(history, config, kept)
    fatal = [g for g in gaps if g.everywhere]
    if fatal:
        raise PreflightError(fatal[0].message(command))
    warnings += [g.message(command) for g in gaps]
    return kept, warnings


def describe_target(target: TargetConfig) -> str:
    """What a target asks of a server, for "nothing matched" messages."""
    parts = [f"{target.market}"]
    if target.gpu_model:
        parts.append(f"gpu_model {target.gpu_model!r}")
    parts.append(f"{target.min_gpus_per_server}"
                 + (f"-{target.max_gpus_per_server}" if target.max_gpus_per_server else "+")
                 + " GPUs per server")
    if target.countries:
        parts.append(f"countries {target.countries}")
    return ", ".join(parts)

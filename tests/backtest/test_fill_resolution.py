"""Replay fills at the resolution of the recorded data: a rival raise recorded since our last
decision preempts us until our answer takes effect (``fills="tick"``); the older model
(``fills="decision"``) answers every raise before it costs anything."""

import numpy as np
import pytest

from bidder.backtest.grid import expand_grid, run_backtest
from bidder.backtest.runner import RunSettings

from bt_helpers import config, history


def run(fills: str):
    # one server; the rival raises at ticks 3 and 6, each time above our bid
    rival = np.array([[2.0], [2.0], [2.0], [3.0], [3.0], [3.0], [4.0], [4.0], [4.0], [4.0]])
    h = history(rival, floor=1.0)
    cfg = config(count=1, cap=10.0)
    return run_backtest(h, cfg, expand_grid("outbid:tick=0.1"), RunSettings(fills=fills),
                        modes=["replay"], targets=cfg.targets)


def test_a_recorded_raise_preempts_us_until_we_answer_it():
    tick = run("tick")
    target = tick.runs[0].targets["t"]
    row = tick.metrics[0]["targets"][0]
    # created at tick 0, held from tick 1; outbid for one tick at each raise, then won back
    assert target.held_units.tolist() == [0, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    assert row["preemptions"] == 2
    assert row["regret"] >= -1e-9


def test_the_old_model_answers_before_the_raise_costs_anything():
    decision = run("decision")
    target = decision.runs[0].targets["t"]
    assert target.held_units.tolist() == [1] * 10
    assert decision.metrics[0]["targets"][0]["preemptions"] == 0
    tick = run("tick").metrics[0]["targets"][0]
    assert tick["availability"] < decision.metrics[0]["targets"][0]["availability"]


def test_unknown_fills_are_refused():
    with pytest.raises(ValueError, match="unknown fills"):
        RunSettings(fills="later")

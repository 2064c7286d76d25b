"""Market memory warmed from the recorded market before a run (``bidder.warmup``): a run that
starts with it sees what it would have seen had it been running all along, and so does not buy a
ratchet's trough at its first decision."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.backtest.data import load_history
from bidder.backtest.runner import RunSettings, Variant, run_variant
from bidder.backtest.simrecord import record_sim
from bidder.cli import main
from bidder.config import parse_config
from bidder.rules import Create
from bidder.sim.options import SimOptions
from bidder.warmup import WINDOW, warm_memories
from storage.db import open_database
from storage.gigaspot_ingest import SnapshotIngester

from bt_helpers import bid, config, encode, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_memory_views as views  # noqa: E402  (its Watch strategy notes what views carry)

T = 1_735_000_000.0
MINUTES = 540
UNTIL = T + 480 * 60.0
"""The run's start: the saw on server 1 is in a trough (8.6), under server 2's quiet rival (9)."""


def saw(minute: int) -> float:
    """A ratchet: back up to 20 every 100 minutes, 10 % down every 10."""
    return round(20.0 * 0.9 ** ((minute % 100) // 10), 4)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Nine hours of a snapshot a minute: server 1 carries the saw, server 2 a rival at 9."""
    url = f"sqlite:///{tmp_path_factory.mktemp('warmup') / 'market.db'}"
    with open_database(url, writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        for m in range(MINUTES):
            snapshot = {"1": machine([bid(100 + m // 100, 20, saw(m))]),
                        "2": machine([bid(9, 21, 9.0)])}
            ingester.ingest(encode(snapshot), snapshot_time=T + 60 * m, fetched_at=T + 60 * m,
                            source=f"s_{m}.json", clore_price=0.05, my_user_id=77)
    return url


def warm(url: str, cfg: Any, until: float = UNTIL):
    with open_database(url, writer=False) as db, db.sessions() as session:
        return warm_memories(session, cfg, cfg.targets, until=until)


def load(url: str, cfg: Any, start: float, end: float):
    with open_database(url, writer=False) as db, db.sessions() as session:
        return load_history(session, cfg.targets, allocation="highest_price", start=start,
                            end=end)


def test_it_takes_in_the_recorded_window_before_the_start(recorded):
    warmed = warm(recorded, config(count=1))
    assert warmed.ticks == WINDOW / 60  # a snapshot a minute in [start - 6 h, start)
    assert warmed.since == pytest.approx(UNTIL - WINDOW)
    assert "warmed from 360 recorded tick(s)" in warmed.describe()
    contest = warmed.memories["t"].observe(UNTIL, np.array([1, 2]), np.array([8.6, 9.0]))
    assert contest.falls_seen[0] > 2.0 and contest.falls_per_hour[0] > 2.0
    assert contest.rival_high[0] == pytest.approx(20.0)  # the saw's top, not the trough it is in
    assert contest.falls_seen[1] == 0.0 and contest.raises_per_hour[1] == 0.0


def test_nothing_recorded_before_the_start_leaves_it_empty_and_says_so(recorded):
    warmed = warm(recorded, config(count=1), until=T)
    assert warmed.ticks == 0 and warmed.since is None
    assert warmed.describe() == ("market memory starts empty: nothing recorded in the 6 h "
                                 "before the start")
    assert warmed.memories["t"].observe(T, np.array([1]), np.array([20.0])).falls_seen[0] == 0.0


def test_a_warmed_run_sees_what_a_run_that_was_running_saw(recorded):
    """The views of a run started at ``UNTIL`` with warmed memory carry the figures of a run that
    had been deciding since six hours before."""
    cfg = config(count=1)
    watch = Variant("watch", f"{views.__name__}:Watch", {})
    views.SEEN.clear()
    run_variant(load(recorded, cfg, UNTIL - WINDOW, T + MINUTES * 60), cfg, watch,
                RunSettings(), "replay")
    running = {now: seen for now, *seen in views.SEEN if now >= UNTIL}
    views.SEEN.clear()
    run_variant(load(recorded, cfg, UNTIL, T + MINUTES * 60), cfg, watch, RunSettings(),
                "replay", memories=warm(recorded, cfg).memories)
    started = {now: seen for now, *seen in views.SEEN}
    assert sorted(started) == sorted(running) and len(started) == 60
    for now, (ids, *figures) in started.items():
        assert ids.tolist() == running[now][0].tolist()
        for got, want in zip(figures, running[now][1:]):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)


def first_servers(url: str, memories: Any) -> list[int]:
    cfg = config(count=1, cap=100.0)
    record = run_variant(load(url, cfg, UNTIL, T + MINUTES * 60), cfg,
                         Variant("outbid", "outbid", {}), RunSettings(), "replay",
                         memories=memories, keep_trace=True)
    assert record.trace is not None
    return [a.server_id for a in record.trace[0][1].actions if isinstance(a, Create)]


def test_outbid_started_with_warmed_memory_leaves_the_trough_alone(recorded):
    """Cold, the saw's trough (8.6) looks cheaper than the quiet server (9) and outbid buys it,
    to lose it at the next jump; warmed, it knows the saw and buys the quiet server."""
    assert first_servers(recorded, None) == [1]
    assert first_servers(recorded, warm(recorded, config(count=1, cap=100.0)).memories) == [2]


def test_bidder_backtest_from_a_later_start_warms_it_and_says_so(recorded, tmp_path, capsys):
    """``bidder backtest --from`` starts its runs as a bot started then would: warmed, and it
    says so (the header, the JSON); a fixed bid uses no memory and nothing is said."""
    db = recorded.removeprefix("sqlite:///")
    toml = tmp_path / "bidder.toml"
    toml.write_text(f'[storage]\nurl = "sqlite:///{db}"\n\n[[targets]]\nname = "t"\n'
                    'market = "gigaspot"\ncount = 1\nmax_price_per_gpu_day = 100\n'
                    'oc = { pl = 200 }\n')
    out = tmp_path / "out.json"
    args = ["backtest", "--config", str(toml), "--workers", "1", "--mode", "replay",
            "--from", str(int(UNTIL))]
    assert main([*args, "--strategy", "outbid", "--json", str(out)]) == 0
    assert "market memory warmed from 360 recorded tick(s) before the start" \
        in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["memory_warmup"] == {
        "ticks": 360, "since": UNTIL - WINDOW, "why_empty": None}
    assert main([*args, "--strategy", "fixed:price_per_gpu_day=9"]) == 0
    assert "market memory" not in capsys.readouterr().out
    assert main([*args[:-2], "--strategy", "outbid"]) == 0  # from the recording's first tick
    assert "market memory starts empty: nothing recorded in the 6 h before the start" \
        in capsys.readouterr().out


def test_bidder_optimize_warms_the_in_sample_and_the_held_out_runs_alike(recorded, tmp_path,
                                                                          capsys):
    """Each of its histories starts as a bot started then would: with what was recorded before
    it (the held-out part: the in-sample market before it)."""
    toml = tmp_path / "bidder.toml"
    toml.write_text(f'[storage]\nurl = "{recorded}"\n\n[[targets]]\nname = "t"\n'
                    'market = "gigaspot"\ncount = 1\nmax_price_per_gpu_day = 100\n'
                    'oc = { pl = 200 }\n')
    argv = ["optimize", "--config", str(toml), "--target", "t", "--trials", "1", "--seed", "1",
            "--min-availability", "0", "--from", str(int(UNTIL)), "--holdout", "30m",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    assert main([*argv, "--strategy", "outbid", "--space", "tick=0.01:1"]) == 0
    err = capsys.readouterr().err
    assert "in-sample runs: market memory warmed from 360 recorded tick(s) before the start" in err
    assert "held-out runs: market memory warmed from 360 recorded tick(s) before the start" in err
    assert main([*argv, "--strategy", "fixed", "--space", "price_per_gpu_day=5:60"]) == 0
    assert "market memory" not in capsys.readouterr().err


def test_spot_targets_in_two_currencies_both_warm(tmp_path):
    """A history ranks spot offers in one currency, so spot targets are loaded per currency:
    each one's memory takes in the recorded polls (none is left empty for the other's sake)."""
    start = 1_700_000_000.0
    with open_database(f"sqlite:///{tmp_path / 'sim.db'}", writer=True) as db:
        record_sim(db, SimOptions(seed=4, spot_servers=12, gigaspot_machines=20), start=start,
                   minutes=90)
        cfg = parse_config({"targets": [
            {"name": "c", "market": "spot", "count": 1, "max_price_per_gpu_day": 500},
            {"name": "b", "market": "spot", "count": 1, "currency": "bitcoin",
             "max_price_per_gpu_day": 0.01},
            {"name": "g", "market": "gigaspot", "count": 1, "max_price_per_gpu_day": 100,
             "oc": {"pl": 200}}]})
        with db.sessions() as session:
            warmed = warm_memories(session, cfg, cfg.targets, until=start + 80 * 60)
    assert warmed.ticks > 0 and warmed.why_empty is None
    for name in ("c", "b", "g"):
        memory = warmed.memories[name]
        assert memory.servers > 0 and memory.observed_at < start + 80 * 60, name


def test_a_target_whose_market_cannot_be_loaded_is_named_while_others_warm(recorded, monkeypatch):
    """Warming never reports a partial result as whole: a target its load refused is named."""
    import bidder.warmup as warmup
    from bidder.backtest.data import HistoryError

    real = warmup.load_history

    def refuse_spot(session, targets, **kw):
        if any(t.market == "spot" for t in targets):
            raise HistoryError("spot polls unreadable here")
        return real(session, targets, **kw)

    monkeypatch.setattr(warmup, "load_history", refuse_spot)
    cfg = parse_config({"targets": [
        {"name": "t", "market": "gigaspot", "count": 1, "max_price_per_gpu_day": 100,
         "oc": {"pl": 200}},
        {"name": "s", "market": "spot", "count": 1, "max_price_per_gpu_day": 100}]})
    with open_database(recorded, writer=False) as db, db.sessions() as session:
        warmed = warm_memories(session, cfg, cfg.targets, until=UNTIL)
    assert warmed.ticks == 360 and warmed.memories["s"].servers == 0
    assert warmed.describe().endswith("; s left empty: spot polls unreadable here")

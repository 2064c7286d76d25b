"""``bidder optimize``: Optuna trials that are backtests, a study shared by processes through
PostgreSQL, a holdout scored beside the in-sample result, bad spaces refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bidder.backtest.simrecord import record_sim
from bidder.cli import main
from bidder.optimize import INFEASIBLE, SpaceError, objective_value, parse_duration, parse_space
from bidder.sim.options import SimOptions
from storage.db import open_database
from strategies.registry import StrategyError

START = 1_700_000_000.0
CONFIG = """
[storage]
url = "{url}"

[[targets]]
name = "rigs"
market = "gigaspot"
count = 3
max_price_per_gpu_day = 80
oc = {{ pl = 150 }}
"""
SPACE = "tick=0.01:2.0:log,switch_margin=0.0:0.3"


def recorded(url: str, folder: Path, minutes: int = 40) -> Path:
    with open_database(url, writer=True) as db:
        record_sim(db, SimOptions(seed=4, spot_servers=3, gigaspot_machines=30), start=START,
                   minutes=minutes)
    config = folder / "bidder.toml"
    config.write_text(CONFIG.format(url=url))
    return config


def optimize(config: Path, *args: str) -> int:
    return main(["optimize", "--config", str(config), "--target", "rigs", "--strategy", "outbid",
                 *args])


def test_trials_are_backtests_and_the_holdout_is_scored_beside(db_url, tmp_path, capsys):
    config = recorded(db_url, tmp_path)
    out = tmp_path / "out.json"
    assert optimize(config, "--space", SPACE, "--trials", "4", "--seed", "1", "--holdout", "10m",
                    "--min-availability", "0.5", "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert "holdout cost/GPU-h" in text and "4 finished trial(s)" in text
    doc = json.loads(out.read_text())
    assert doc["trials_in_study"] == 4 and len(doc["top"]) == 4
    best = doc["best"]
    assert set(best["params"]) == {"tick", "switch_margin"}
    assert 0.01 <= best["params"]["tick"] <= 2.0 and 0.0 <= best["params"]["switch_margin"] <= 0.3
    assert best["metrics"]["availability"] is not None and best["holdout"] is not None
    assert best["holdout"]["gpu_hours"] < best["metrics"]["gpu_hours"]  # 10 of 40 minutes
    values = [row["value"] for row in doc["top"]]
    assert values == sorted(values)

    # the best trial's in-sample metrics are what `bidder backtest` gives for its parameters
    bt = tmp_path / "bt.json"
    params = ",".join(f"{k}={v!r}" for k, v in best["params"].items())
    to = START + 60 * 39 - 600
    assert main(["backtest", "--config", str(config), "--workers", "1", "--mode", "replay",
                 "--strategy", f"outbid:{params}", "--to", str(to), "--json", str(bt)]) == 0
    row = json.loads(bt.read_text())["runs"][0]["targets"][0]
    for key in ("cost", "availability", "gpu_hours"):
        assert row[key] == pytest.approx(best["metrics"][key], rel=1e-9, abs=1e-12)


def test_two_processes_share_one_study_on_postgresql(pg_url, tmp_path):
    config = recorded(pg_url, tmp_path, minutes=20)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "bidder", "optimize", "--config", str(config), "--target",
            "rigs", "--strategy", "outbid", "--space", SPACE, "--trials", "3", "--study",
            "shared", "--storage", pg_url, "--min-availability", "0.5"]
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [subprocess.Popen([*argv, "--json", str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for out in outs]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    docs = [json.loads(out.read_text()) for out in outs]
    assert max(d["trials_in_study"] for d in docs) == 6
    assert all(d["trials_in_study"] >= 3 for d in docs)

    import optuna

    study = optuna.load_study(study_name="shared", storage=pg_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    workers = sorted(t.user_attrs["worker"].rsplit(":", 1)[1] for t in done)
    assert sorted(set(workers)) == sorted(str(p.pid) for p in procs)
    assert workers.count(str(procs[0].pid)) == 3 and workers.count(str(procs[1].pid)) == 3
    # the bot's own tables and Optuna's live side by side in one database
    with open_database(pg_url, writer=False) as db:
        from sqlalchemy import inspect

        tables = set(inspect(db.engine).get_table_names())
    assert {"gigaspot_snapshot", "trials", "studies"} <= tables


def test_a_study_with_other_settings_is_refused(sqlite_url, tmp_path, capsys):
    config = recorded(sqlite_url, tmp_path, minutes=15)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize(config, "--space", "tick=0.01:1.0", "--trials", "1", "--storage", storage,
                    "--min-availability", "0") == 0
    capsys.readouterr()
    assert optimize(config, "--space", "tick=0.01:2.0", "--trials", "1", "--storage", storage) == 2
    assert "was started with other settings (min_availability, space" in capsys.readouterr().err


@pytest.mark.parametrize("space, message", [
    ("tick=0.01:2.0,bravery=0:1", "strategy 'outbid' has no parameter 'bravery' (its parameters: "
                                  "contest_penalty, contested_at, payback_hours, switch_margin, tick)"),
    ("tick=2.0:0.01", "low must be below high"),
    ("tick=0:1:log", "a log range must start above 0"),
    ("switch_margin=0.0:1.5", "1.5 is not allowed"),
    ("tick", "expected name=low:high[:log]"),
])
def test_a_bad_space_is_refused_by_name(tmp_path, capsys, space, message):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(url=f"sqlite:///{tmp_path / 'none.db'}"))
    out = tmp_path / "o.json"
    assert optimize(config, "--space", space, "--trials", "2", "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder optimize: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # no database, no output


def test_the_floor_ranks_every_infeasible_trial_after_every_feasible_one():
    cheap_short = {"availability": 0.8, "cost_per_gpu_hour": 0.1}
    dear_full = {"availability": 1.0, "cost_per_gpu_hour": 9.0}
    nearly = {"availability": 0.94, "cost_per_gpu_hour": 50.0}
    held_nothing = {"availability": 0.0, "cost_per_gpu_hour": None}
    values = [objective_value(m, "cost_per_gpu_hour", 0.95)
              for m in (dear_full, nearly, cheap_short, held_nothing)]
    assert values[0] == 9.0 and values == sorted(values) and values[1] >= INFEASIBLE


def test_durations():
    assert [parse_duration(t) for t in ("90m", "6h", "2d", "3600", "1.5h")] == [
        5400.0, 21600.0, 172800.0, 3600.0, 5400.0]
    with pytest.raises(ValueError, match="positive duration"):
        parse_duration("soon")


def test_a_strategy_with_a_required_parameter_is_searched_by_its_range():
    dims = parse_space("price_per_gpu_day=1:5", "fixed")
    assert [(d.name, d.low, d.high) for d in dims] == [("price_per_gpu_day", 1.0, 5.0)]
    with pytest.raises(SpaceError, match=r"price_per_gpu_day=0:5: 0 is not allowed"):
        parse_space("price_per_gpu_day=0:5", "fixed")
    # profit's revenue: from the target's strategy_params (held fixed) or a range of its own
    with pytest.raises(StrategyError, match="revenue_per_gpu_day"):
        parse_space("margin=0:0.5", "profit")
    assert [d.name for d in parse_space("margin=0:0.5", "profit",
                                        {"revenue_per_gpu_day": 10.0})] == ["margin"]
    assert [d.name for d in parse_space("margin=0:0.5,revenue_per_gpu_day=1:10", "profit")] == \
        ["margin", "revenue_per_gpu_day"]
    with pytest.raises(SpaceError, match=r"margin=0:1: 1 is not allowed"):
        parse_space("margin=0:1", "profit", {"revenue_per_gpu_day": 10.0})


def best_equals_a_backtest(config: Path, out: Path, strategy: str, fixed: str, tmp_path) -> dict:
    """The best trial of ``out`` and the check that ``bidder backtest`` of its parameters (and
    ``fixed``, the target's strategy_params) gives its metrics."""
    best = json.loads(out.read_text())["best"]
    params = ",".join([*filter(None, [fixed]), *(f"{k}={v!r}" for k, v in best["params"].items())])
    bt = tmp_path / "bt.json"
    assert main(["backtest", "--config", str(config), "--workers", "1", "--mode", "replay",
                 "--strategy", f"{strategy}:{params}", "--json", str(bt)]) == 0
    row = json.loads(bt.read_text())["runs"][0]["targets"][0]
    for key in ("cost", "availability", "gpu_hours"):
        assert row[key] == pytest.approx(best["metrics"][key], rel=1e-9, abs=1e-12)
    return best


def test_fixed_is_tuned_over_a_price_range(sqlite_url, tmp_path, capsys):
    config = recorded(sqlite_url, tmp_path, minutes=15)
    out = tmp_path / "out.json"
    assert main(["optimize", "--config", str(config), "--target", "rigs", "--strategy", "fixed",
                 "--space", "price_per_gpu_day=5:60", "--trials", "3", "--seed", "1",
                 "--min-availability", "0", "--json", str(out)]) == 0, capsys.readouterr().err
    best = best_equals_a_backtest(config, out, "fixed", "", tmp_path)
    assert 5 <= best["params"]["price_per_gpu_day"] <= 60


def test_trials_hold_the_target_s_strategy_params(sqlite_url, tmp_path, capsys):
    config = recorded(sqlite_url, tmp_path, minutes=15)
    config.write_text(config.read_text() + 'strategy = "profit"\n'
                      'strategy_params = { revenue_per_gpu_day = 40.0, tick = 0.2 }\n')
    out = tmp_path / "out.json"
    assert main(["optimize", "--config", str(config), "--target", "rigs", "--strategy", "profit",
                 "--space", "margin=0:0.5", "--trials", "2", "--seed", "1",
                 "--min-availability", "0", "--json", str(out)]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["setup"]["strategy_params"] == {"revenue_per_gpu_day": 40.0, "tick": 0.2}
    best = best_equals_a_backtest(config, out, "profit", "revenue_per_gpu_day=40.0,tick=0.2",
                                  tmp_path)
    assert 0 <= best["params"]["margin"] <= 0.5


def test_the_bot_s_postgresql_url_opens_the_study_through_psycopg(sqlite_url, pg_url, tmp_path,
                                                                  monkeypatch):
    """``postgresql://`` names no driver: SQLAlchemy 2.0 picks psycopg2 (2.1 psycopg 3), which
    the [postgres] extra does not bring; the study opens through psycopg 3, as the bot's
    engines do, whichever SQLAlchemy is installed."""
    import sqlalchemy.dialects.postgresql.base as pg_base
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    class WithoutPsycopg2(PGDialect_psycopg2):
        @classmethod
        def import_dbapi(cls):
            raise ModuleNotFoundError("No module named 'psycopg2'")

    monkeypatch.setattr(pg_base, "dialect", WithoutPsycopg2)  # SQLAlchemy 2.0's default
    config = recorded(sqlite_url, tmp_path, minutes=10)
    bare = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert bare != pg_url
    assert optimize(config, "--space", "tick=0.01:1.0", "--trials", "1", "--storage", bare,
                    "--min-availability", "0") == 0
    import optuna

    assert len(optuna.load_study(study_name="outbid-rigs", storage=pg_url).trials) == 1


def test_the_study_s_setup_is_read_and_written_under_the_creation_lock(sqlite_url, tmp_path,
                                                                      monkeypatch):
    """Two processes starting a new study together with other settings: the second must find
    the first's setup, so the setup is read and written while the lock is held."""
    from contextlib import contextmanager

    import optuna

    import bidder.commands.optimize as command

    held: list[bool] = []
    seen: list[tuple[str, bool]] = []

    @contextmanager
    def lock(url):
        held.append(True)
        try:
            yield
        finally:
            held.pop()

    real_attrs = optuna.study.Study.user_attrs
    real_set = optuna.study.Study.set_user_attr

    def read(study):
        seen.append(("read", bool(held)))
        return real_attrs.fget(study)

    def write(study, key, value):
        seen.append(("write", bool(held)))
        return real_set(study, key, value)

    monkeypatch.setattr(command, "_creation_lock", lock)
    monkeypatch.setattr(optuna.study.Study, "user_attrs", property(read))
    monkeypatch.setattr(optuna.study.Study, "set_user_attr", write)
    config = recorded(sqlite_url, tmp_path, minutes=10)
    assert optimize(config, "--space", "tick=0.01:1.0", "--trials", "1", "--storage",
                    f"sqlite:///{tmp_path / 'study.db'}", "--min-availability", "0") == 0
    assert ("read", True) in seen and ("write", True) in seen
    assert ("read", False) not in seen and ("write", False) not in seen


# --- a resumed study: same inputs resume it; anything that changes a trial's score is refused ---

RESUMED = ("--space", "tick=0.01:1.0", "--trials", "1", "--min-availability", "0")


def study_trials(storage: str) -> int:
    import optuna

    return len(optuna.load_study(study_name="outbid-rigs", storage=storage).trials)


def test_a_second_process_with_the_same_inputs_resumes_the_study(sqlite_url, tmp_path, capsys):
    """The setup one process writes is what another, with the same arguments, config and
    recording, computes: nothing differs after Optuna's JSON round trip."""
    from bidder.backtest.runner import BACKTEST_MODEL

    config = recorded(sqlite_url, tmp_path, minutes=15)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert optimize(config, *RESUMED, "--storage", storage, "--holdout", "5m",
                    "--json", str(first)) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "bidder", "optimize", "--config", str(config),
                           "--target", "rigs", "--strategy", "outbid", *RESUMED, "--storage",
                           storage, "--holdout", "5m", "--json", str(second)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(second.read_text())
    assert doc["trials_in_study"] == 2 and study_trials(storage) == 2
    setup = doc["setup"]
    assert setup == json.loads(first.read_text())["setup"]
    assert setup["target_config"]["count"] == 3 and setup["target_config"]["oc"]["pl"] == 150
    assert "ssh_key" not in setup["target_config"]  # no secrets in a shared study
    assert setup["market_rules"]["creation_fee"] == pytest.approx(0.045)  # as recorded
    assert setup["run_settings"]["exchange"]["payment"] == "pay_your_bid"
    assert setup["run_settings"]["reactive"] is None  # replay: no rivals answer
    assert setup["bot"]["decide_interval"] == pytest.approx(30.0)
    in_sample, held_out = setup["history"]["in_sample"], setup["history"]["held_out"]
    assert in_sample["first"] == pytest.approx(START, abs=60)
    assert in_sample["last"] == pytest.approx(held_out["first"])
    assert held_out["last"] - in_sample["last"] == pytest.approx(300.0, abs=60)
    assert in_sample["ticks"] > held_out["ticks"] > 1
    assert setup["market_memory"] == {"warmed_ticks": 0, "since": None}  # nothing before START
    assert setup["backtest_model"] == BACKTEST_MODEL


def strip_recorded_fees(url: str) -> None:
    """As ``bidder import`` of bare CDN files leaves it: no creation fee recorded, so the
    config's is charged."""
    from sqlalchemy import update

    from storage.models import GigaspotSnapshot

    with open_database(url, writer=True) as db, db.sessions.begin() as session:
        session.execute(update(GigaspotSnapshot).values(creation_fees=None))


def edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def grow(url: str, config: Path) -> None:
    """The recorder carries on: five more minutes after the first fifteen (without a creation
    fee, as the first were left: the history alone differs)."""
    with open_database(url, writer=True) as db:
        record_sim(db, SimOptions(seed=4, spot_servers=3, gigaspot_machines=30),
                   start=START + 15 * 60, minutes=5)
    strip_recorded_fees(url)


@pytest.mark.parametrize("change, message", [
    (lambda url, config: config.write_text(config.read_text() + '[sim]\npayment = '
                                           '"second_price"\n'),
     "(run_settings: run_settings.exchange.payment 'pay_your_bid' -> 'second_price')"),
    (lambda url, config: config.write_text(config.read_text() + '[sim]\nstep_rule = '
                                           '"fraction:0.2"\n'),
     "(run_settings: run_settings.exchange.step_rule 'fraction:0.1' -> 'fraction:0.2')"),
    (lambda url, config: edit(config, "count = 3", "count = 4"),
     "(target_config: target_config.count 3 -> 4)"),
    (lambda url, config: config.write_text(config.read_text() + '[markets.gigaspot]\n'
                                           'creation_fee = 0.1\n'),
     "(market_rules: market_rules.creation_fee 0.0 -> 0.1)"),
    (grow, "(history: history.in_sample.last 2023-11-14 22:27:20 UTC -> 2023-11-14 22:32:20 "
           "UTC; history.in_sample.ticks 15 -> 20)"),
], ids=["sim-payment", "sim-step-rule", "target-count", "creation-fee", "longer-history"])
def test_a_study_resumed_under_other_conditions_is_refused_by_what_differs(
        sqlite_url, tmp_path, capsys, change, message):
    config = recorded(sqlite_url, tmp_path, minutes=15)
    strip_recorded_fees(sqlite_url)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize(config, *RESUMED, "--storage", storage) == 0
    capsys.readouterr()
    change(sqlite_url, config)
    assert optimize(config, *RESUMED, "--storage", storage) == 2
    err = capsys.readouterr().err
    refusal = err.splitlines()[-1]
    assert refusal == (f"bidder optimize: study 'outbid-rigs' was started with other settings "
                       f"{message}; name another --study")
    assert "Traceback" not in err and study_trials(storage) == 1


def test_a_config_fee_the_recording_overrides_changes_no_score_and_resumes(sqlite_url, tmp_path,
                                                                           capsys):
    """Only what a trial is charged counts: with a fee recorded, the config's is not charged."""
    config = recorded(sqlite_url, tmp_path, minutes=15)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize(config, *RESUMED, "--storage", storage) == 0
    config.write_text(config.read_text() + "[markets.gigaspot]\ncreation_fee = 0.1\n")
    assert optimize(config, *RESUMED, "--storage", storage) == 0, capsys.readouterr().err
    assert study_trials(storage) == 2


def test_a_study_an_older_bidder_started_is_refused_by_what_it_did_not_record(sqlite_url,
                                                                             tmp_path, capsys):
    import optuna

    config = recorded(sqlite_url, tmp_path, minutes=15)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert optimize(config, *RESUMED, "--storage", storage) == 0
    study = optuna.load_study(study_name="outbid-rigs", storage=storage)
    older = ("strategy", "target", "mode", "objective", "min_availability", "space",
             "holdout_seconds", "from", "to")
    study.set_user_attr("setup", {k: study.user_attrs["setup"][k] for k in older})
    capsys.readouterr()
    assert optimize(config, *RESUMED, "--storage", storage) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "bidder optimize: study 'outbid-rigs' was started by an older bidder that did not record "
        "backtest_model, bot, budget, history, market_memory, market_rules, poller, "
        "run_settings, target_config; name another --study")
    assert "Traceback" not in err and study_trials(storage) == 1


def test_every_bot_and_poller_setting_a_backtest_reads_is_in_the_setup():
    """The setup holds the [bot] and [poller] settings by name, so that editing one only the
    live bot reads does not stop a study; one a backtest starts reading must be added."""
    import re

    import bidder
    from bidder.optimize import BOT_SETTINGS, POLLER_SETTINGS

    root = Path(bidder.__file__).parent
    files = [*(root / "backtest").glob("*.py"),
             *(root / name for name in ("view.py", "rules.py", "watchlist.py", "warmup.py"))]
    text = "\n".join(f.read_text() for f in files)
    bot = set(re.findall(r"config\.bot\.(\w+)", text))
    poller = set(re.findall(r"\bpoller\.(\w+)", text))
    assert "decide_interval" in bot and bot <= set(BOT_SETTINGS)
    assert "spot_interval" in poller and poller <= set(POLLER_SETTINGS)


def test_the_refusal_walks_nested_settings_and_an_unreadable_setup_is_refused():
    from bidder.optimize import setup_refusal

    now = {"mode": "replay", "run_settings": {"exchange": {"payment": "second_price",
                                                           "call_latency": 1.0}}}
    stored = {"mode": "replay", "run_settings": {"exchange": {"payment": "pay_your_bid"}}}
    assert setup_refusal("s", now, now) is None
    assert setup_refusal("s", stored, now) == (
        "study 's' was started with other settings (run_settings: "
        "run_settings.exchange.call_latency (not set) -> 1.0; "
        "run_settings.exchange.payment 'pay_your_bid' -> 'second_price'); name another --study")
    assert setup_refusal("s", "garbled", now) == (
        "study 's' has a setup this bidder cannot read ('garbled'); name another --study")


def test_db_takes_a_sqlite_path_as_backtest_does(tmp_path, capsys):
    """--db PATH|URL, as the README and bidder backtest have it (a path was refused as 'not a
    database URL')."""
    path = tmp_path / "sim.db"
    config = recorded(f"sqlite:///{path}", tmp_path, minutes=15)
    config.write_text(config.read_text().replace(str(path), str(tmp_path / "elsewhere.db")))
    assert optimize(config, "--db", str(path), "--space", SPACE, "--trials", "1",
                    "--min-availability", "0") == 0
    assert "1 finished trial(s)" in capsys.readouterr().out

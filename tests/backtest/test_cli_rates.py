"""``bidder backtest`` and ``bidder optimize`` on imported CDN files, which carry no rate: a rule
that needs a rate the recording lacks stops the command with its name and how to give it (optimize:
before any study exists or any trial runs), or, lacking it at some ticks, runs with a warning in the
table and the JSON; a target no server matched is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidder.cli import main

FIXTURE = Path(__file__).parents[1] / "storage" / "fixtures" / "prod_6K80i2Tyvm_1735176176.json"
T0 = 1735176176
TARGET = """
[[targets]]
name = "{name}"
market = "gigaspot"
gpu_model = "{model}"
count = 8
max_price_per_gpu_day = 5
oc = {{ pl = 80 }}
"""


def import_snapshots(db: Path, folder: Path, minutes: range, *extra: str) -> None:
    """The documented snapshot (an idle 8-GPU GTX 1660 machine, floor 13.5 CLORE), once a minute."""
    folder.mkdir(exist_ok=True)
    doc = FIXTURE.read_text()
    paths = []
    for minute in minutes:
        path = folder / f"prod_x_{T0 + 60 * minute}.json"
        path.write_text(doc)
        paths.append(str(path))
    config = folder / "import.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n')
    assert main(["import", "--config", str(config), *extra, *paths]) == 0

FEE = "[markets.gigaspot]\ncreation_fee = 0.05\n"
"""A creation fee, so that a test of rate warnings sees no warning about a fee of 0."""


def write_config(tmp_path: Path, db: Path, *, targets=(("rigs", "1660"),), extra: str = "") -> Path:
    config = tmp_path / "bt.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n' + extra + "".join(
        TARGET.format(name=name, model=model) for name, model in targets))
    return config


def backtest(config: Path, *args: str) -> int:
    return main(["backtest", "--config", str(config), "--workers", "1", "--mode", "replay",
                 "--strategy", "outbid", *args])


@pytest.fixture
def imported(tmp_path) -> Path:
    db = tmp_path / "cdn.db"
    import_snapshots(db, tmp_path / "cdn", range(30))
    return db


def test_host_profit_without_a_clore_rate_stops_naming_it(imported, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "out.json"
    assert backtest(write_config(tmp_path, imported), "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith('bidder backtest: the GigaSPOT allocation rule "host_profit"')
    assert "needs USD per CLORE, and none was recorded in this range" in err
    assert "bidder backtest --clore-usd RATE" in err and "bidder import --clore-usd" in err
    assert not out.exists()


def availability(doc: dict) -> float:
    [run] = doc["runs"]
    [target] = run["targets"]
    return target["availability"]


def test_clore_usd_given_to_the_backtest_makes_it_hold(imported, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert backtest(write_config(tmp_path, imported, extra=FEE), "--clore-usd", "0.03", "--json",
                    str(out)) == 0
    assert "WARNING" not in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert availability(doc) > 0.9
    assert doc["settings"]["warnings"] == [] and doc["settings"]["clore_usd_given"] == 0.03


def test_a_rate_recorded_at_import_is_used(tmp_path, capsys):
    db = tmp_path / "cdn.db"
    import_snapshots(db, tmp_path / "cdn", range(30), "--clore-usd", "0.03")
    out = tmp_path / "out.json"
    assert backtest(write_config(tmp_path, db), "--json", str(out)) == 0
    assert availability(json.loads(out.read_text())) > 0.9


def test_a_rate_missing_at_some_ticks_is_a_warning_in_the_table_and_the_json(tmp_path, capsys):
    db = tmp_path / "cdn.db"
    import_snapshots(db, tmp_path / "a", range(10))
    import_snapshots(db, tmp_path / "b", range(10, 30), "--clore-usd", "0.03")
    capsys.readouterr()
    out = tmp_path / "out.json"
    assert backtest(write_config(tmp_path, db, extra=FEE), "--json", str(out)) == 0
    lines = capsys.readouterr().out.splitlines()
    warning = ('WARNING: the GigaSPOT allocation rule "host_profit" ([markets.gigaspot] '
               "allocation) needs USD per CLORE, and it is missing at 10 of 30 ticks")
    assert lines[1].startswith(warning) and lines[-1].startswith(warning)
    doc = json.loads(out.read_text())
    [message] = doc["settings"]["warnings"]
    assert message.startswith(warning[len("WARNING: "):])
    # the idle machine has no rival: the bid alone holds it, rate or not, as on the exchange
    assert availability(doc) > 0.9


def test_a_usd_budget_without_a_rate_stops_naming_it(imported, tmp_path, capsys):
    capsys.readouterr()
    config = write_config(tmp_path, imported, extra='[markets.gigaspot]\nallocation = '
                          '"highest_price"\n[budget]\nmax_per_day = 100\n')
    assert backtest(config) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder backtest: the budget in USD needs USD per CLORE, and none was "
                          "recorded in this range")
    assert backtest(config, "--clore-usd", "0.03") == 0


def test_a_target_without_candidates_is_reported_not_a_traceback(imported, tmp_path, capsys):
    capsys.readouterr()
    only = write_config(tmp_path, imported, targets=[("h100", "H100")])
    assert backtest(only, "--clore-usd", "0.03") == 2
    err = capsys.readouterr().err
    assert err == ("bidder backtest: no recorded server ever matched target 'h100' (gigaspot, "
                   "gpu_model 'H100', 1+ GPUs per server): nothing to backtest\n")

    both = write_config(tmp_path, imported, targets=[("rigs", "1660"), ("h100", "H100")])
    out = tmp_path / "out.json"
    assert backtest(both, "--clore-usd", "0.03", "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert "WARNING: target 'h100' left out: no recorded server ever matched it" in text
    doc = json.loads(out.read_text())
    assert doc["settings"]["targets"] == ["rigs"]
    assert availability(doc) > 0.9


def test_db_takes_a_path_as_well_as_a_url(imported, tmp_path, capsys, monkeypatch):
    config = tmp_path / "no-storage.toml"
    config.write_text(TARGET.format(name="rigs", model="1660"))
    monkeypatch.chdir(imported.parent)
    for db in (imported.name, str(imported), f"sqlite:///{imported}"):
        assert backtest(config, "--clore-usd", "0.03", "--db", db) == 0
    assert backtest(config, "--db", "nothere.db") == 2
    assert "no database at" in capsys.readouterr().err


# --- bidder optimize: the same checks, before any study exists or any trial runs ---------------


def optimize(config: Path, *args: str) -> int:
    return main(["optimize", "--config", str(config), "--target", "rigs", "--strategy", "outbid",
                 "--space", "tick=0.01:2.0:log", "--trials", "2", "--seed", "1",
                 "--min-availability", "0", *args])


def test_optimize_without_a_clore_rate_stops_before_any_study_or_trial(imported, tmp_path,
                                                                      capsys):
    capsys.readouterr()
    study = tmp_path / "study.db"
    out = tmp_path / "out.json"
    assert optimize(write_config(tmp_path, imported), "--storage", f"sqlite:///{study}",
                    "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "trial " not in err
    assert err.startswith('bidder optimize: the GigaSPOT allocation rule "host_profit"')
    assert "needs USD per CLORE, and none was recorded in this range" in err
    assert "bidder optimize --clore-usd RATE" in err and "bidder import --clore-usd" in err
    assert not study.exists() and not out.exists()


def test_clore_usd_given_to_optimize_makes_its_trials_hold(imported, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert optimize(write_config(tmp_path, imported, extra=FEE), "--clore-usd", "0.03", "--json",
                    str(out)) == 0
    assert "WARNING" not in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["warnings"] == [] and doc["clore_usd_given"] == 0.03
    assert doc["setup"]["clore_usd"] == 0.03
    assert doc["best"]["metrics"]["availability"] > 0.9


def test_optimize_with_a_rate_missing_at_some_ticks_warns_in_the_table_and_the_json(tmp_path,
                                                                                   capsys):
    db = tmp_path / "cdn.db"
    import_snapshots(db, tmp_path / "a", range(10))
    import_snapshots(db, tmp_path / "b", range(10, 30), "--clore-usd", "0.03")
    capsys.readouterr()
    out = tmp_path / "out.json"
    assert optimize(write_config(tmp_path, db, extra=FEE), "--json", str(out)) == 0
    lines = capsys.readouterr().out.splitlines()
    warning = ('WARNING: the GigaSPOT allocation rule "host_profit" ([markets.gigaspot] '
               "allocation) needs USD per CLORE, and it is missing at 10 of 30 ticks")
    assert lines[1].startswith(warning) and lines[-1].startswith(warning)
    doc = json.loads(out.read_text())
    [message] = doc["warnings"]
    assert message.startswith(warning[len("WARNING: "):])
    assert "bidder optimize --clore-usd RATE" in message
    # the idle machine has no rival: the bid alone holds it, rate or not, as on the exchange
    assert doc["best"]["metrics"]["availability"] > 0.9


def test_optimize_with_a_holdout_lacking_the_rate_stops_naming_the_holdout(tmp_path, capsys):
    db = tmp_path / "cdn.db"
    import_snapshots(db, tmp_path / "a", range(19), "--clore-usd", "0.03")
    import_snapshots(db, tmp_path / "b", range(19, 30))
    capsys.readouterr()
    study = tmp_path / "study.db"
    assert optimize(write_config(tmp_path, db, extra=FEE), "--holdout", "10m", "--storage",
                    f"sqlite:///{study}") == 2
    err = capsys.readouterr().err
    assert err.startswith('bidder optimize: in the --holdout period, the GigaSPOT allocation '
                          'rule "host_profit"')
    assert "none was recorded in this range" in err and "trial " not in err
    assert not study.exists()


def test_optimize_for_a_target_without_candidates_stops(imported, tmp_path, capsys):
    capsys.readouterr()
    config = write_config(tmp_path, imported, targets=[("rigs", "H100")])
    assert optimize(config, "--clore-usd", "0.03") == 2
    assert capsys.readouterr().err == (
        "bidder optimize: no recorded server ever matched target 'rigs' (gigaspot, gpu_model "
        "'H100', 1+ GPUs per server): nothing to backtest\n")

"""``bidder backtest``: outputs, the grid over processes, and bad input refused with nothing written."""

import importlib
import io
import json
from pathlib import Path

import pytest

from bidder.backtest.data import load_history
from bidder.backtest.grid import ProgressBar, expand_grid, run_backtest
from bidder.backtest.runner import RunSettings
from bidder.backtest.simrecord import record_sim
from bidder.cli import main
from bidder.config import load_config
from bidder.sim.options import SimOptions
from storage.db import open_database

START = 1_700_000_000.0
CONFIG = """
[storage]
url = "sqlite:///{db}"

[[targets]]
name = "rigs"
market = "gigaspot"
count = 4
max_price_per_gpu_day = 80
oc = {{ pl = 150 }}
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bt")
    with open_database(f"sqlite:///{folder / 'sim.db'}", writer=True) as db:
        record_sim(db, SimOptions(seed=4, spot_servers=5, gigaspot_machines=60),
                   start=START, minutes=45)
    config = folder / "bidder.toml"
    config.write_text(CONFIG.format(db=folder / "sim.db"))
    return config


def backtest(config: Path, *args: str) -> int:
    return main(["backtest", "--config", str(config), "--workers", "1", *args])


def test_table_json_and_plot(recorded, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    code = backtest(recorded, "--strategy", "outbid", "--strategy", "fixed:price_per_gpu_day=9|20",
                    "--json", str(out), "--plot", str(png))
    assert code == 0
    text = capsys.readouterr().out
    assert "fixed:price_per_gpu_day=20" in text and "regret" in text
    doc = json.loads(out.read_text())
    assert doc["settings"]["exchange"]["step_rule"] == "fraction:0.1"
    assert doc["settings"]["modes"] == ["replay", "reactive"]
    assert doc["settings"]["fills"] == "tick"
    assert doc["settings"]["exchange"]["call_latency"] == 1.0
    assert doc["settings"]["exchange"]["gigaspot_refusals"] == "silent"
    assert [(r["strategy"], r["mode"]) for r in doc["runs"]] == [
        (s, m) for s in ("outbid", "fixed:price_per_gpu_day=9", "fixed:price_per_gpu_day=20")
        for m in ("replay", "reactive")]
    row = doc["runs"][0]["targets"][0]
    for key in ("cost", "cost_per_gpu_hour", "availability", "gaps", "gap_min",
                "time_to_acquire_min", "preemptions_per_gpu_day", "overpay_mean", "overpay_p95",
                "regret", "oracle_full_cost", "api_calls", "lowerings",
                "oracle_whole_servers_cost", "oracle_whole_servers_gpu_hours",
                "surplus_gpu_hours", "rebuys_within_hour", "orders_created", "creation_fees"):
        assert key in row
    # the creation fee is the one the simulated get_gigaspot reported, and it was charged
    assert doc["settings"]["creation_fees"] == [
        {"market": "gigaspot", "fee": 0.045, "currency": "CLORE-Blockchain",
         "source": "recorded get_gigaspot"}]
    assert "creation fee gigaspot 0.045 CLORE-Blockchain (recorded get_gigaspot)" in text
    assert row["orders_created"] > 0
    assert row["oracle_full_cost"] <= row["oracle_whole_servers_cost"] + 1e-9
    assert doc["runs"][0]["total"]["currency"] == "CLORE-Blockchain"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_grid_over_processes_equals_running_one_by_one(recorded):
    config = load_config(recorded)
    with open_database(config.storage_url(), writer=False) as db, db.sessions() as session:
        history = load_history(session, config.targets, allocation="host_profit")
    variants = expand_grid("outbid:tick=0.01|0.5") + expand_grid("fixed:price_per_gpu_day=12")
    kwargs = dict(modes=["replay", "reactive"], targets=config.targets)
    parallel = run_backtest(history, config, variants, RunSettings(), workers=2, **kwargs)
    sequential = run_backtest(history, config, variants, RunSettings(), workers=1, **kwargs)
    assert parallel.metrics == sequential.metrics


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nosuch"], "unknown strategy 'nosuch'"),
    (["--strategy", "outbid:tick=cheap"], "parameter 'tick'"),
    (["--strategy", "outbid", "--from", "2023-11-15T00:00", "--to", "2023-11-14"],
     "the range is empty"),
    (["--strategy", "outbid", "--from", "2030-01-01"],
     "no GigaSPOT snapshots recorded between 2030-01-01 00:00:00 UTC and the end"),
    (["--strategy", "outbid", "--from", "yesterday"], "expected ISO 8601"),
    (["--strategy", "outbid", "--target", "nope"], "unknown target"),
    (["--strategy", "outbid", "--step-rule", "half"], "--step-rule"),
    (["--strategy", "outbid", "--call-latency", "-1"], "--call-latency -1: expected seconds"),
    (["--strategy", "outbid", "--call-latency", "60"], "under [bot] decide_interval (30)"),
])
def test_bad_input_is_refused_with_nothing_written(recorded, tmp_path, capsys, args, message):
    out = tmp_path / "out.json"
    assert backtest(recorded, *args, "--json", str(out)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_snapshots_is_refused(tmp_path, capsys):
    with open_database(f"sqlite:///{tmp_path / 'empty.db'}", writer=True):
        pass
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(db=tmp_path / "empty.db"))
    assert backtest(config, "--strategy", "outbid", "--json", str(tmp_path / "o.json")) == 2
    assert "no GigaSPOT snapshots and no spot polls" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_missing_matplotlib_is_refused_before_any_work(recorded, tmp_path, capsys, monkeypatch):
    real = importlib.import_module

    def without_matplotlib(name, *args):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr("bidder.backtest.plot.importlib.import_module", without_matplotlib)
    code = backtest(recorded, "--strategy", "outbid", "--plot", str(tmp_path / "p.png"),
                    "--json", str(tmp_path / "o.json"))
    assert code == 2
    assert "pip install 'clore-bidder[plot]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_draws_one_line_and_ends_it_once():
    ticks = iter([0.0, 10.0, 20.0, 30.0])
    stream = io.StringIO()
    bar = ProgressBar(stream, force=True, width=10, clock=lambda: next(ticks))
    bar(0.5)
    bar(1.0)
    bar(1.0)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[#####.....]  50%" in text and "~  10 s left" in text
    assert ProgressBar(io.StringIO()).enabled is False  # not a terminal, not forced


def test_without_a_recorded_fee_the_config_s_is_charged_and_a_zero_is_never_silent():
    from bidder.backtest.fees import fee_warnings, with_creation_fees
    from bidder.config import parse_config

    config = parse_config({"markets": {"spot": {"creation_fee": 0.2}}, "targets": [
        {"name": "g", "market": "gigaspot", "count": 1, "max_price_per_gpu_day": 5,
         "oc": {"pl": 150}},
        {"name": "s", "market": "spot", "count": 1, "max_price_per_gpu_day": 5}]})
    recorded = {"CLORE-Blockchain": 0.07}
    changed, fees = with_creation_fees(config, config.targets, recorded)
    assert changed.markets.gigaspot.creation_fee == 0.07
    assert [(f.market, f.fee, f.source) for f in fees] == [
        ("gigaspot", 0.07, "recorded get_gigaspot"), ("spot", 0.2, "config [markets.spot] creation_fee")]
    assert fee_warnings(fees) == []
    _, fees = with_creation_fees(config, config.targets, {})
    assert [(f.market, f.fee) for f in fees] == [("gigaspot", 0.2), ("spot", 0.2)]
    free = parse_config({"targets": [
        {"name": "g", "market": "gigaspot", "count": 1, "max_price_per_gpu_day": 5,
         "oc": {"pl": 150}}]})
    _, fees = with_creation_fees(free, free.targets, {})
    assert len(fee_warnings(fees)) == 1 and "gigaspot creation fee is 0" in fee_warnings(fees)[0]


def test_fills_decision_keeps_the_older_model_for_comparison(recorded, tmp_path, capsys):
    out = tmp_path / "old.json"
    assert backtest(recorded, "--strategy", "outbid", "--mode", "replay", "--fills", "decision",
                    "--json", str(out)) == 0
    assert json.loads(out.read_text())["settings"]["fills"] == "decision"
    with pytest.raises(SystemExit) as refused:
        backtest(recorded, "--strategy", "outbid", "--fills", "later")
    assert refused.value.code == 2
    assert "--fills: invalid choice: 'later'" in capsys.readouterr().err


def import_bare_snapshots(config: Path, folder: Path, *, after: int, count: int) -> list[int]:
    """``count`` CDN files a minute apart after ``after``, imported with no saved reply."""
    from bt_helpers import bid, encode, machine

    folder.mkdir()
    times = [after + 60 * (k + 1) for k in range(count)]
    for t in times:
        snapshot = {"900001": machine([bid(77, 5, 3.0)], min_bid=2.0)}
        (folder / f"prod_cdn_{t}.json").write_bytes(encode(snapshot))
    assert main(["import", "--config", str(config), str(folder)]) == 0
    return times


def test_snapshots_imported_after_the_recording_keep_the_recorded_creation_fee(tmp_path, capsys):
    """Bare CDN files imported after a live recording carry no ``get_gigaspot`` reply: they say
    nothing about the fee, so the backtest still charges the one recorded before them, also in a
    database written before missing values were SQL NULL (the JSON text 'null') and past a
    reply that gave no fee (``{}``)."""
    from sqlalchemy import JSON, func, select, update

    from storage.models import GigaspotSnapshot

    url = f"sqlite:///{tmp_path / 'mixed.db'}"  # the fix is in the models: SQLite shows it
    with open_database(url, writer=True) as db:
        record_sim(db, SimOptions(seed=4, spot_servers=2, gigaspot_machines=20), start=START,
                   minutes=15)
        with db.sessions() as session:
            last = session.scalar(select(func.max(GigaspotSnapshot.time)))
    config = tmp_path / "bidder.toml"
    config.write_text(CONFIG.format(db=tmp_path / "mixed.db"))
    times = import_bare_snapshots(config, tmp_path / "cdn", after=last, count=3)
    with open_database(url, writer=True) as db, db.sessions() as session, session.begin():
        fees = dict(session.execute(select(GigaspotSnapshot.time, GigaspotSnapshot.creation_fees)
                                    .where(GigaspotSnapshot.time.in_(times))).all())
        nulls = session.scalar(select(func.count()).where(GigaspotSnapshot.creation_fees.is_(None)))
        assert fees == dict.fromkeys(times) and nulls == 3  # SQL NULL, not the JSON text 'null'
        session.execute(update(GigaspotSnapshot).where(GigaspotSnapshot.time == times[1])
                        .values(creation_fees=JSON.NULL))  # as written before the fix
        session.execute(update(GigaspotSnapshot).where(GigaspotSnapshot.time == times[2])
                        .values(creation_fees={}))  # a reply without fees
    capsys.readouterr()
    out = tmp_path / "o.json"
    assert backtest(config, "--strategy", "outbid", "--json", str(out)) == 0
    assert "creation fee gigaspot 0.045 CLORE-Blockchain (recorded get_gigaspot)" in \
        capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["creation_fees"] == [
        {"market": "gigaspot", "fee": 0.045, "currency": "CLORE-Blockchain",
         "source": "recorded get_gigaspot"}]


def test_the_recorded_fee_is_the_newest_that_gave_one_on_either_backend(db_url):
    """Missing fees are SQL NULL on both backends; rows that give no fee (SQL NULL, the JSON
    'null' of older databases, ``{}``, no usable number) are passed over, newest first."""
    from bt_helpers import bid, encode, machine
    from sqlalchemy import JSON, func, select, update

    from bidder.backtest.fees import recorded_creation_fees
    from storage.gigaspot_ingest import SnapshotIngester
    from storage.models import GigaspotSnapshot

    given = [{"CLORE-Blockchain": 0.5}, {"CLORE-Blockchain": 0.07}, None, None, {},
             {"CLORE-Blockchain": "free"}]
    with open_database(db_url, writer=True) as db:
        ingester = SnapshotIngester(db.sessions)
        for k, fees in enumerate(given):
            snapshot = encode({"900001": machine([bid(77, 5, 3.0 + k)])})
            ingester.ingest(snapshot, snapshot_time=int(START) + 60 * k, fetched_at=START,
                            source=f"s{k}", creation_fees=fees)
        with db.sessions() as session, session.begin():
            assert session.scalar(select(func.count()).where(
                GigaspotSnapshot.creation_fees.is_(None))) == 2
            session.execute(update(GigaspotSnapshot).where(
                GigaspotSnapshot.time == int(START) + 120).values(creation_fees=JSON.NULL))
        with db.sessions() as session:
            assert recorded_creation_fees(session) == {"CLORE-Blockchain": 0.07}
            assert recorded_creation_fees(session, end=START + 59) == {"CLORE-Blockchain": 0.5}
            assert recorded_creation_fees(session, end=START - 1) == {}
            # the session is still usable after a half-read result (a server-side cursor on PG)
            assert session.scalar(select(func.count()).select_from(GigaspotSnapshot)) == 6


def test_spot_targets_in_two_currencies_are_refused_and_one_at_a_time_runs(recorded, tmp_path,
                                                                         capsys):
    """One best rival per server is ranked in one currency: two spot currencies at once would
    compare offers unconverted. Refused in one line naming them and the way out; each alone runs."""
    config = tmp_path / "two.toml"
    config.write_text(recorded.read_text() + """
[[targets]]
name = "in-clore"
market = "spot"
count = 1
unit = "servers"
max_price_per_gpu_day = 80

[[targets]]
name = "in-bitcoin"
market = "spot"
count = 1
unit = "servers"
currency = "bitcoin"
max_price_per_gpu_day = 0.001
""")
    out = tmp_path / "out.json"
    assert backtest(config, "--strategy", "outbid", "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert "more than one order currency (CLORE-Blockchain, bitcoin)" in err and "--target" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert backtest(config, "--strategy", "outbid", "--target", "in-clore", "--target", "rigs",
                    "--json", str(out)) == 0
    assert {t["target"] for t in json.loads(out.read_text())["runs"][0]["targets"]} \
        == {"in-clore", "rigs"}


def test_a_range_the_recording_does_not_cover_is_said_above_and_below_the_table(recorded,
                                                                                tmp_path, capsys):
    """--from before the recording's start, --to after its end: the table covers less than was
    asked (a recording begun later, pruned, stopped), and says so; a range inside it says
    nothing."""
    out = tmp_path / "out.json"
    code = backtest(recorded, "--strategy", "outbid", "--mode", "replay", "--from",
                    str(START - 3600), "--to", str(START + 7200), "--json", str(out))
    assert code == 0
    text = capsys.readouterr().out
    starts = ("WARNING: --from 2023-11-14 21:13 UTC: the recording starts at 2023-11-14 22:13 UTC; "
              "the backtest covers only what was recorded")
    assert text.count(starts) == 2  # above and below the table
    assert text.count("WARNING: --to 2023-11-15 00:13 UTC: the recording ends at ") == 2
    warnings = json.loads(out.read_text())["settings"]["warnings"]
    assert any(w.startswith("--from 2023-11-14 21:13 UTC") for w in warnings)
    assert backtest(recorded, "--strategy", "outbid", "--mode", "replay", "--from",
                    str(START + 600), "--to", str(START + 1800)) == 0
    assert "the recording starts at" not in capsys.readouterr().out

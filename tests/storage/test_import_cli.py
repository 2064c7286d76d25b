"""``bidder import``: files and folders, time order, re-import, bad files, exit codes, messages."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from bidder.cli import main
from storage.db import open_database
from storage.market_views import gigaspot_frame
from storage.models import GigaspotSnapshot

T0 = 1735176176


def logged_errors(err: str) -> list[str]:
    """The messages of the ERROR lines a command wrote to stderr."""
    return [line.split(": ", 1)[1] for line in err.splitlines() if " ERROR " in line]


@pytest.fixture
def config_file(tmp_path, db_url):
    path = tmp_path / "bidder.toml"
    path.write_text(f'[storage]\nurl = "{db_url}"\n')
    return path


@pytest.fixture
def snapshots_dir(tmp_path, doc_snapshot, changed):
    """Two good snapshots, written newest first, and a file that is not a snapshot."""
    folder = tmp_path / "snapshots"
    folder.mkdir()
    later = changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.3)
    (folder / f"prod_a_{T0 + 60}.json").write_text(json.dumps(later))
    (folder / f"prod_a_{T0}.json").write_text(json.dumps(doc_snapshot))
    (folder / "notes.txt").write_text("not a snapshot")
    return folder


def recorded_times(db_url):
    with open_database(db_url, writer=False) as db, db.sessions() as session:
        return session.scalars(select(GigaspotSnapshot.time).order_by(GigaspotSnapshot.id)).all()


def test_imports_a_folder_in_time_order_and_skips_it_the_second_time(config_file, snapshots_dir,
                                                                     db_url, capsys):
    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"imported {snapshots_dir}/prod_a_{T0}.json: 2 machines (new versions: 2 facts, "
        "2 states, 1 bids)",
        f"imported {snapshots_dir}/prod_a_{T0 + 60}.json: 2 machines (new versions: 0 facts, "
        "0 states, 1 bids)",
        "2 imported, 0 skipped (already recorded), 0 failed"]
    assert recorded_times(db_url) == [T0, T0 + 60]

    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "0 imported, 2 skipped (already recorded), 0 failed"
    assert out[0] == f"skipped  {snapshots_dir}/prod_a_{T0}.json: already recorded"
    assert recorded_times(db_url) == [T0, T0 + 60]


def test_bad_files_are_named_and_the_good_ones_imported(config_file, snapshots_dir, tmp_path,
                                                        db_url, doc_snapshot, changed, capsys):
    truncated = snapshots_dir / f"prod_a_{T0 + 120}.json"
    truncated.write_text(json.dumps(doc_snapshot)[:100])
    mistyped = snapshots_dir / f"prod_a_{T0 + 180}.json"
    mistyped.write_text(json.dumps(changed(doc_snapshot, ("40329", "bids", 0, "price"), "x")))
    undated = snapshots_dir / "snapshot.json"
    undated.write_text(json.dumps(doc_snapshot))
    good = snapshots_dir / f"prod_a_{T0 + 240}.json"
    good.write_text(json.dumps(changed(doc_snapshot, ("40329", "bids", 0, "price"), 0.4)))
    negative = snapshots_dir / f"prod_a_{T0 + 270}.json"
    negative.write_text(json.dumps(changed(doc_snapshot, ("40329", "min_bid"), -1)))

    code = main(["import", "--config", str(config_file), str(snapshots_dir)])
    assert code == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[-2] == "3 imported, 0 skipped (already recorded), 4 failed"
    assert out[-1] == f"failed: {undated}, {truncated}, {mistyped}, {negative}"
    errors = logged_errors(captured.err)
    assert len(errors) == 4
    assert errors[0] == f"snapshot {undated}: the name does not end in _<unix time>.json"
    assert errors[1].startswith(f"snapshot {truncated}: not valid JSON (truncated?)")
    assert errors[2] == (f"snapshot {mistyped}: machine 40329: bids[0].price: Input should be a "
                         "valid number, unable to parse string as a number")
    assert errors[3] == (f"snapshot {negative}: machine 40329: min_bid: Input should be greater "
                         "than or equal to 0")
    assert recorded_times(db_url) == [T0, T0 + 60, T0 + 240]
    with open_database(db_url, writer=False) as db, db.sessions() as session:
        assert gigaspot_frame(session).bid_price.tolist() == [0.4]


def test_an_older_snapshot_is_refused(config_file, snapshots_dir, tmp_path, doc_snapshot, capsys):
    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 0
    older = tmp_path / f"prod_b_{T0 + 30}.json"
    older.write_text(json.dumps(doc_snapshot))
    assert main(["import", "--config", str(config_file), str(older)]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"failed: {older}"
    assert logged_errors(captured.err) == [(
        f"snapshot {older}: taken at 2024-12-26 01:23:26 UTC, before the newest recorded snapshot "
        "(2024-12-26 01:23:56 UTC); snapshots are recorded in time order only")]


def test_without_config_the_default_database_is_used(snapshots_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CLORE_API_KEY", raising=False)
    assert main(["import", str(snapshots_dir / f"prod_a_{T0}.json")]) == 0
    database = tmp_path / "xdg" / "clore-bidder" / "bidder.db"
    assert database.exists()
    with open_database(f"sqlite:///{database}", writer=False) as db, db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(GigaspotSnapshot)) == 1


def test_a_bad_config_exits_2(tmp_path, snapshots_dir, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[storage]\nurll = 'x'\n")
    assert main(["import", "--config", str(config), str(snapshots_dir)]) == 2
    assert "storage.urll: Extra inputs are not permitted" in capsys.readouterr().err


def test_a_database_from_a_newer_program_exits_2(config_file, snapshots_dir, db_url, capsys):
    from storage.models import SchemaVersion
    from storage.schema import SCHEMA_VERSION
    with open_database(db_url, writer=True) as db, db.sessions.begin() as session:
        session.add(SchemaVersion(version=SCHEMA_VERSION + 1, description="future"))
    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 2
    assert "written by a newer clore-bidder" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{blocker}/sub/bidder.db"\n')
    snap = tmp_path / f"snap_{T0}.json"
    snap.write_text("{}")
    assert main(["import", "--config", str(config), str(snap)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder import: cannot open the database sqlite:///")
    assert "Traceback" not in err


def test_a_database_password_is_never_shown(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[storage]\nurl = "nosuchdriver://user:hunter2@localhost/db"\n')
    snap = tmp_path / f"snap_{T0}.json"
    snap.write_text("{}")
    assert main(["import", "--config", str(config), str(snap)]) == 2
    err = capsys.readouterr().err
    assert "cannot open the database nosuchdriver://user:***@localhost/db" in err
    assert "hunter2" not in err


def clore_prices(db_url):
    with open_database(db_url, writer=False) as db, db.sessions() as session:
        return session.execute(select(GigaspotSnapshot.time, GigaspotSnapshot.clore_price,
                                      GigaspotSnapshot.creation_fees, GigaspotSnapshot.my_user_id)
                               .order_by(GigaspotSnapshot.id)).all()


@pytest.mark.parametrize("path, value, field, message", [
    (("40329", "bids", 0, "price"), -0.5, "bids[0].price", "greater than or equal to 0"),
    (("40329", "bids", 0, "pl"), -10, "bids[0].pl", "greater than or equal to 0"),
    (("40329", "min_bid"), -1, "min_bid", "greater than or equal to 0"),
    (("40329", "reliability"), 1.5, "reliability", "less than or equal to 1"),
    (("35083", "reliability"), -0.1, "reliability", "greater than or equal to 0"),
    (("40329", "gpus", 0, "pl"), [-5, 450], "gpus[0].pl[0]", "greater than or equal to 0"),
])
def test_impossible_values_are_refused_naming_machine_and_field(
        config_file, tmp_path, db_url, doc_snapshot, changed, capsys, path, value, field, message):
    bad = tmp_path / f"prod_a_{T0}.json"
    bad.write_text(json.dumps(changed(doc_snapshot, path, value)))
    assert main(["import", "--config", str(config_file), str(bad)]) == 2
    captured = capsys.readouterr()
    [error] = logged_errors(captured.err)
    assert error.startswith(f"snapshot {bad}: machine {path[0]}: {field}: Input should be {message}")
    assert "Traceback" not in captured.err
    assert recorded_times(db_url) == []


@pytest.mark.parametrize("make", ["missing", "missing-in-folder-list", "empty-folder"])
def test_paths_that_give_nothing_to_import_exit_2_and_make_no_database(
        config_file, tmp_path, snapshots_dir, db_url, capsys, make):
    if make == "missing":
        paths, named = [tmp_path / "nonexistent" / "x.json"], "nonexistent/x.json: no such file"
    elif make == "missing-in-folder-list":
        paths, named = [snapshots_dir, tmp_path / "typo"], "typo: no such file or folder"
    else:
        (tmp_path / "empty").mkdir()
        paths, named = [tmp_path / "empty"], "empty: the folder has no *.json files to import"
    assert main(["import", "--config", str(config_file), *map(str, paths)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("bidder import: ") and named in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not (tmp_path / "data").exists()


def test_clore_usd_is_recorded_with_every_imported_snapshot(config_file, snapshots_dir, db_url,
                                                             capsys):
    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 0
    assert "no CLORE rate recorded" in capsys.readouterr().err
    assert [row.clore_price for row in clore_prices(db_url)] == [None, None]

    later = snapshots_dir.parent / f"prod_a_{T0 + 120}.json"
    later.write_text((snapshots_dir / f"prod_a_{T0}.json").read_text())
    assert main(["import", "--config", str(config_file), "--clore-usd", "0.031", str(later)]) == 0
    assert "no CLORE rate" not in capsys.readouterr().err
    assert [row.clore_price for row in clore_prices(db_url)] == [None, None, 0.031]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_a_bad_clore_usd_is_refused(config_file, snapshots_dir, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["import", "--config", str(config_file), "--clore-usd", value, str(snapshots_dir)])
    assert exit_.value.code == 2
    assert "--clore-usd: expected a positive number of USD per CLORE" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_saved_get_gigaspot_replies_give_their_rate_fees_and_user_id(config_file, snapshots_dir,
                                                                      db_url, capsys):
    reply = {"code": 0, "my_user_id": 77, "clore_price": 0.025,
             "creation_fees": {"CLORE-Blockchain": 1.5},
             "v1_snapshot_url": f"https://cdn.example/prod_a_{T0 + 60}.json"}
    (snapshots_dir / "get_gigaspot_reply.json").write_text(json.dumps(reply))
    code = main(["import", "--config", str(config_file), "--clore-usd", "0.03", str(snapshots_dir)])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "2 imported, 0 skipped (already recorded), 0 failed")
    # the first snapshot precedes the reply: the given rate; the second is the reply's
    assert [tuple(r) for r in clore_prices(db_url)] == [
        (T0, 0.03, None, None), (T0 + 60, 0.025, {"CLORE-Blockchain": 1.5}, 77)]


def test_a_broken_get_gigaspot_reply_is_named(config_file, snapshots_dir, tmp_path, capsys):
    (snapshots_dir / "reply.json").write_text(json.dumps(
        {"code": 0, "my_user_id": "me", "v1_snapshot_url": f"https://cdn/x_{T0}.json"}))
    assert main(["import", "--config", str(config_file), str(snapshots_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bidder import: {snapshots_dir / 'reply.json'}: a get_gigaspot reply, "
                          "but my_user_id: Input should be a valid integer")
    assert not (tmp_path / "data").exists()

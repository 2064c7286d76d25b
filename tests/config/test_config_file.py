"""``bidder status --config`` finds the database from the file without pydantic: the same URL the
validated ``Config`` gives (one function for both), and one line, exit 2, for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidder.cli import main
from bidder.config import Config, ConfigError, MarketsConfig, load_config, parse_config
from bidder.config_file import storage_url_of_file
from bidder.lowering import stored_rules

MODES = ("live", "dry-run", "sim")


@pytest.mark.parametrize("text", [
    "",
    'data_dir = "{tmp}/data"\n',
    'data_dir = "~/bidder-data"\n',
    '[storage]\nurl = "postgresql+psycopg://bot:secret@db.example/bidder"\n',
    '[storage]\nurl = ""\n',
    'data_dir = "{tmp}/data"\n[storage]\nurl = "sqlite:///elsewhere.db"\n',
    '[[targets]]\nname = "t"\nmarket = "spot"\ncount = 1\nmax_price_per_gpu_day = 1.0\n',
])
@pytest.mark.parametrize("xdg", [None, "xdg"])
def test_the_file_gives_the_url_the_config_gives(tmp_path, monkeypatch, text, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / xdg))
    path = tmp_path / "c.toml"
    path.write_text(text.format(tmp=tmp_path))
    config = load_config(path)
    for mode in MODES:
        assert storage_url_of_file(path, mode) == config.storage_url(mode)  # type: ignore[arg-type]
        assert storage_url_of_file(None, mode) == Config().storage_url(mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, needle", [
    ("data_dir = [", "is not valid TOML"),
    ("data_dir = 3", "invalid configuration in {path}: data_dir: expected a path"),
    ("storage = 3", "storage: expected a table"),
    ('[storage]\nurl = 5', "storage.url: expected a URL"),
    ('[storage]\nur1 = "sqlite:///x.db"', "storage.ur1: extra inputs are not permitted"),
    (None, "cannot read config file {path}"),
])
def test_a_bad_config_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys, text, needle):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
        with pytest.raises(ConfigError):  # the full config refuses it too
            load_config(path)
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bidder status: ") and needle.format(path=path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # no database made


@pytest.mark.parametrize("markets", [
    {},
    {"spot": {"cooldown": 300.0, "fee_fraction": 0.05}},
    {"spot": {"cooldown": 300.0}, "gigaspot": {"cooldown": 60.0, "cooldown_from_creation": False,
                                               "fee_fraction": 0.0}},
])
def test_status_reads_the_market_rules_a_run_recorded(markets):
    """``stored_rules`` on what a run records (``MarketsConfig`` dumped) gives the rules the bot
    used, for both markets; a recorded ``markets`` without GigaSPOT, or a key an older run did not
    record, reads as ``MarketsConfig`` would fill it."""
    config = MarketsConfig.model_validate(markets)
    for recorded in (config.model_dump(mode="json"), markets):
        for market in ("spot", "gigaspot"):
            rules, stored = config.rules(market), stored_rules(recorded, market)  # type: ignore[arg-type]
            assert (stored.cooldown, stored.cooldown_from_creation, stored.fee_fraction) == (
                rules.cooldown, rules.cooldown_from_creation, rules.fee_fraction)


def test_the_config_module_still_offers_what_it_did():
    from bidder import config

    assert config.CLORE == "CLORE-Blockchain" and issubclass(config.ConfigError, ValueError)
    assert parse_config({}).resolved_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/clore-bidder")

"""``bidder run`` refuses what cannot work, with a message naming it; the demo config is valid."""

from __future__ import annotations

from pathlib import Path

from bidder.cli import main
from bidder.commands.run import demo_config
from bidder.sim.connect import sim_config


def test_run_needs_a_config_unless_simulated(capsys):
    assert main(["run"]) == 2
    assert "bidder run: --config is required (or --sim" in capsys.readouterr().err


def test_run_needs_a_key_for_the_real_market(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("CLORE_API_KEY", raising=False)
    config = tmp_path / "bot.toml"
    config.write_text('[[targets]]\nname = "s"\nmarket = "spot"\ncount = 1\n'
                      'max_price_per_gpu_day = 10.0\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "bidder run: no API key: set CLORE_API_KEY" in capsys.readouterr().err


def test_run_needs_targets(tmp_path: Path, capsys):
    config = tmp_path / "bot.toml"
    config.write_text('[api]\nkey = "abc123"\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "the config has no [[targets]]" in capsys.readouterr().err


def test_the_demo_holds_both_markets_within_a_budget_and_needs_no_key():
    config = sim_config(demo_config())
    assert {t.market for t in config.targets} == {"spot", "gigaspot"}
    assert config.budget.max_per_day is not None
    assert config.api.resolved_key(environ={}) is not None
    assert config.api.min_interval > 1.05  # room for thread switches at 60x


TARGET = ('[[targets]]\nname = "s"\nmarket = "spot"\ncount = 1\nmax_price_per_gpu_day = 10.0\n'
          'ssh_password = "pw12345678"\n')


def test_a_misspelt_strategy_parameter_stops_before_any_database(tmp_path: Path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = tmp_path / "bot.toml"
    config.write_text('[api]\nkey = "abc123"\n' + TARGET + 'strategy_params = { tikc = 0.05 }\n')
    for mode in ([], ["--dry-run"]):
        assert main(["run", "--config", str(config), *mode]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "bidder run: targets[0] (s): strategy 'outbid': parameter 'tikc'" in err
    assert not (tmp_path / "data").exists()


def test_an_unknown_strategy_in_sim_keeps_the_old_sim_database(tmp_path: Path, capsys,
                                                                monkeypatch):
    data = tmp_path / "data" / "clore-bidder"
    data.mkdir(parents=True)
    old = data / "bidder-sim.db"
    old.write_bytes(b"the last simulation")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = tmp_path / "bot.toml"
    config.write_text(TARGET + 'strategy = "outbidd"\n')
    assert main(["run", "--sim", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bidder run: targets[0] (s): unknown strategy 'outbidd'; available: fixed" in err
    assert old.read_bytes() == b"the last simulation"
    assert sorted(p.name for p in data.iterdir()) == ["bidder-sim.db"]

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

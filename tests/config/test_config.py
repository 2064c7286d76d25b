"""The config schema: the shipped example is valid, wrong keys and values are named, the key is secret."""

from pathlib import Path

import pytest

from bidder.config import API_KEY_ENV, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_covers_every_section():
    cfg = load_config(ROOT / "config.example.toml")
    assert [t.name for t in cfg.targets] == ["mining-4090", "training-3090"]
    gpu = cfg.targets[0]
    assert gpu.market == "gigaspot" and gpu.oc is not None and gpu.oc.pl == 300
    assert cfg.targets[1].cap_currency == "USD"
    assert cfg.markets.gigaspot.allocation == "host_profit"
    assert cfg.budget.max_per_day == 50.0


def _target(**over):
    t = {"name": "t", "market": "spot", "count": 1, "max_price_per_gpu_day": 1.0}
    t.update(over)
    return t


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"targets": [_target(gpu_modle="x")]}, "targets[0].gpu_modle: Extra inputs are not permitted"),
        ({"targets": [_target(count=0)]}, "targets[0].count"),
        ({"targets": [_target(market="gigaspot")]}, "needs [targets.oc] with pl"),
        ({"targets": [_target(oc={"pl": 100})]}, "oc applies to gigaspot targets only"),
        ({"targets": [_target(countries=["Germany"])]}, "alpha-2"),
        ({"targets": [_target(cap_currency="bitcoin")]}, "cap_currency"),
        ({"targets": [_target(), _target()]}, "repeated: ['t']"),
        ({"api": {"min_interval": 0.5}}, "api.min_interval"),
        ({"apii": {}}, "apii: Extra inputs are not permitted"),
        ({"markets": {"gigaspot": {"allocation": "lottery"}}}, "markets.gigaspot.allocation"),
    ],
)
def test_wrong_keys_and_values_are_named(data, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.toml")
    assert needle in str(err.value)
    assert "x.toml" in str(err.value)


def test_gigaspot_rules_default_to_spot_rules():
    cfg = parse_config({"markets": {"spot": {"cooldown": 900, "initial_step_fraction": 0.2}}})
    assert cfg.markets.gigaspot.cooldown == 900
    assert cfg.markets.gigaspot.initial_step_fraction == 0.2
    assert cfg.markets.rules("gigaspot").allocation == "host_profit"


def test_key_from_config_wins_over_environment_and_is_never_printed():
    cfg = parse_config({"api": {"key": "from-config-123"}})
    assert cfg.api.resolved_key({API_KEY_ENV: "from-env"}).get_secret_value() == "from-config-123"
    assert "from-config-123" not in repr(cfg) and "from-config-123" not in str(cfg.model_dump())


def test_key_from_environment_when_config_has_none():
    cfg = parse_config({})
    assert cfg.api.resolved_key({API_KEY_ENV: "env-key"}).get_secret_value() == "env-key"
    assert cfg.api.resolved_key({}) is None


def test_unreadable_and_invalid_toml_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[api\nkey=1")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(bad)


def test_storage_url_defaults_to_one_file_per_mode_in_the_data_dir(tmp_path):
    cfg = parse_config({"data_dir": str(tmp_path)})
    assert cfg.storage_url() == f"sqlite:///{tmp_path}/bidder.db"
    assert cfg.storage_url("dry-run") == f"sqlite:///{tmp_path}/bidder-dry-run.db"
    assert cfg.storage_url("sim") == f"sqlite:///{tmp_path}/bidder-sim.db"
    assert parse_config({"storage": {"url": "sqlite:///x.db"}}).storage_url("dry-run") == "sqlite:///x.db"


def test_every_default_is_spelled_out_in_the_example():
    """config.example.toml claims to show every key with its default: hold it to that."""
    import tomllib

    from bidder.config import Config

    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Config().model_dump(
        exclude={"targets": True, "data_dir": True, "api": {"key"}, "storage": {"url"}, "budget": {"max_per_day"}})
    for section, values in defaults.items():
        if section == "markets":
            for market, rules in values.items():
                for key, value in rules.items():
                    assert example["markets"][market][key] == value, f"markets.{market}.{key}"
            continue
        for key, value in values.items():
            assert key in example.get(section, {}), f"[{section}] {key} is missing from the example"
            assert example[section][key] == value, f"[{section}] {key}: example differs from default"


@pytest.mark.parametrize("listen", ["9108", "localhost", ":9108", "host:port", "127.0.0.1:70000"])
def test_monitor_listen_must_be_host_and_port(listen):
    with pytest.raises(ConfigError, match=r"monitor.listen: .*expected host:port"):
        parse_config({"monitor": {"listen": listen}})


def test_monitor_is_off_by_default_and_takes_ipv6():
    assert parse_config({}).monitor.address() is None
    assert parse_config({"monitor": {"listen": "[::1]:9108"}}).monitor.address() == ("::1", 9108)


def test_alert_urls_are_secret():
    cfg = parse_config({"alerts": {"urls": ["tgram://123:token/456"]}})
    assert "token" not in repr(cfg) and "token" not in str(cfg.alerts)

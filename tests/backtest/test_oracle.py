"""The oracle is a lower bound no strategy beats, on many random markets (seeded, property style)."""

import numpy as np
import pytest

from bidder.backtest.exchange import ExchangeRules
from bidder.backtest.grid import expand_grid, run_backtest
from bidder.backtest.oracle import _cheapest_first, _whole_covers, oracle
from strategies.base import cheapest_cover
from bidder.backtest.runner import RunSettings

from bidder.config import parse_config
from bt_helpers import config, history

VARIANTS = [
    *expand_grid("outbid:tick=0.01|0.3,switch_margin=0|0.3"),
    *expand_grid("fixed:price_per_gpu_day=2|4|7"),
    *expand_grid("profit:revenue_per_gpu_day=5|9,margin=0.1"),
    *expand_grid("percentile:quantile=0.5"),
]


def random_market(seed: int, allocation: str):
    rng = np.random.default_rng(seed)
    n_ticks, n = 90, 6
    walk = np.exp(np.cumsum(rng.normal(0, 0.08, (n_ticks, n)), axis=0)) * rng.uniform(1.5, 5, n)
    rival = np.where(rng.random((n_ticks, n)) < 0.25, np.nan, walk)
    online = rng.random((n_ticks, n)) > 0.05
    gpus = rng.choice([1, 2, 4], n).tolist()
    floor = rng.uniform(0.5, 2.0, n) * np.array(gpus)
    h = history(rival * np.array(gpus), gpus=gpus, floor=floor, online=online,
                rival_pl=float(rng.choice([150, 300])), new_bid_when_price_changes=True)
    cfg = config(count=int(rng.choice([1, 3, 5])), cap=float(rng.uniform(3, 9)),
                 allocation=allocation, fee=0.025, creation_fee=0.1,
                 cooldown_from_creation=bool(rng.random() < 0.5))
    return h, cfg


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("allocation", ["highest_price", "host_profit"])
def test_no_strategy_beats_the_oracle(seed, allocation):
    h, cfg = random_market(seed, allocation)
    payment = "second_price" if seed % 2 else "pay_your_bid"
    settings = RunSettings(ExchangeRules(step_rule="fraction:0.2" if seed % 3 else "absolute:0.5",
                                         payment=payment))
    result = run_backtest(h, cfg, VARIANTS, settings, modes=["replay", "reactive"],
                          targets=cfg.targets)
    held_something = 0
    for run, m in zip(result.runs, result.metrics):
        row = m["targets"][0]
        assert row["regret"] >= -1e-9, (m["strategy"], m["mode"], row)
        assert row["oracle_like_for_like_cost"] <= row["cost"] + 1e-9
        # fractional <= whole servers <= strategy, for what was held and for the whole target
        whole_like = row["oracle_whole_like_for_like_cost"]
        assert row["oracle_like_for_like_cost"] <= whole_like + 1e-9, (m["strategy"], row)
        assert whole_like <= row["cost"] + 1e-9, (m["strategy"], m["mode"], row)
        assert row["oracle_full_cost"] <= row["oracle_whole_servers_cost"] + 1e-9
        held = run.targets["t"].held_units
        if (held >= cfg.targets[0].count).all():  # held the whole target throughout
            assert row["oracle_whole_servers_cost"] <= row["cost"] + 1e-9
        held_something += int(held.any())
    assert held_something > 0  # the property was exercised


def test_the_oracle_takes_the_cheapest_servers_step_by_step():
    rival = np.array([[3.0, 5.0], [6.0, 4.0], [6.0, 4.0]])  # the cheaper server changes
    h = history(rival, floor=1.0)
    result = run_backtest(h, config(count=1), expand_grid("fixed:price_per_gpu_day=9"),
                          RunSettings(), modes=["replay"], targets=config(count=1).targets)
    # two 60-s steps with a duration (the last tick has none): 3.0, then 4.0 per day
    assert result.oracles["t"].full == pytest.approx((3.0 + 4.0) * 60 / 86_400)
    assert result.oracles["t"].full_availability == pytest.approx(1.0)


def test_a_usd_cap_on_spot_converts_as_the_view_does_where_no_spot_rate_was_recorded():
    # no currency_rates_in_usd recorded: live and the backtest's view convert CLORE with
    # clore_price (0.05 USD), so a 0.5 USD cap is 10 CLORE per GPU-day and every server is in reach
    h = history(np.full((11, 2), np.nan), floor=[1.0, 2.0], market="spot", clore=0.05)
    cfg = parse_config({"targets": [{"name": "t", "market": "spot", "count": 1,
                                     "max_price_per_gpu_day": 0.5, "cap_currency": "USD"}]})
    result = run_backtest(h, cfg, expand_grid("fixed:price_per_gpu_day=5"),
                          RunSettings(fills="decision"), modes=["replay"], targets=cfg.targets)
    row = result.metrics[0]["targets"][0]
    assert row["availability"] == pytest.approx(1.0)  # the strategy's cap was known
    assert result.oracles["t"].full_availability == pytest.approx(1.0)
    # the cheaper floor, with the default 2.5 % fee
    assert result.oracles["t"].full == pytest.approx(1.0 * 1.025 * 600 / 86_400)
    assert 0.0 <= row["regret"] < row["cost"]


def test_the_oracle_is_the_same_computed_in_blocks_of_ticks(monkeypatch):
    h, cfg = random_market(1, "host_profit")
    variants = expand_grid("outbid:tick=0.01|0.2")
    kwargs = dict(modes=["replay"], targets=cfg.targets)
    whole = run_backtest(h, cfg, variants, RunSettings(), **kwargs)
    monkeypatch.setattr("bidder.backtest.oracle.CHUNK_CELLS", 7)  # one tick per block
    blocks = run_backtest(h, cfg, variants, RunSettings(), **kwargs)
    for a, b in zip(whole.metrics, blocks.metrics):
        assert a["targets"][0]["oracle_full_cost"] == pytest.approx(b["targets"][0]["oracle_full_cost"])
        assert a["targets"][0]["regret"] == pytest.approx(b["targets"][0]["regret"])
        for key in ("oracle_whole_servers_cost", "oracle_whole_servers_gpu_hours",
                    "oracle_whole_like_for_like_cost"):
            assert a["targets"][0][key] == pytest.approx(b["targets"][0][key])
    assert np.allclose(whole.oracles["t"].full_per_unit, blocks.oracles["t"].full_per_unit,
                       equal_nan=True)


def test_only_the_cheapest_are_sorted_and_in_the_order_of_a_full_stable_sort():
    rng = np.random.default_rng(3)
    for _ in range(200):
        rows, n, k = int(rng.integers(1, 30)), int(rng.integers(2, 80)), int(rng.integers(1, 12))
        cost = rng.choice([1.0, 2.0, 2.5, np.inf], (rows, n)) if rng.random() < 0.5 else \
            np.where(rng.random((rows, n)) < 0.3, np.inf, rng.uniform(0, 9, (rows, n)))
        k = min(k, n)
        got = _cheapest_first(cost, k)[:, :k]
        np.testing.assert_array_equal(got, np.argsort(cost, axis=1, kind="stable")[:, :k])


@pytest.mark.parametrize("most", [None, 0])
def test_the_bounds_from_the_covers_made_during_the_runs_are_the_oracle(monkeypatch, most):
    """``run_backtest`` bounds each run with covers made while the runs go on; a run holding
    more than those reach (``most`` 0: any) is bounded by the oracle run again."""
    h, cfg = random_market(2, "host_profit")
    if most is not None:
        monkeypatch.setattr("bidder.backtest.grid._most_held", lambda history, target: most)
    result = run_backtest(h, cfg, VARIANTS[:4], RunSettings(), modes=["replay"],
                          targets=cfg.targets)
    first = result.runs[0]
    direct = oracle(h, cfg, cfg.targets[0], step_tick=first.step_tick, step_dt=first.step_dt,
                    held=[r.targets["t"].held_units for r in result.runs])
    assert any(r.targets["t"].held_units.any() for r in result.runs)
    assert [m["targets"][0]["oracle_like_for_like_cost"] for m in result.metrics] == \
        direct.like_for_like
    assert result.oracles["t"].full == direct.full


def test_the_whole_server_covers_are_the_cheapest_covers_step_by_step():
    """Every step and every count at once, as the strategies' exact cover finds them one by one."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        steps, n, most = int(rng.integers(1, 6)), int(rng.integers(1, 12)), int(rng.integers(1, 14))
        units = rng.choice([0, 1, 2, 4, 8], (steps, n))
        m = np.where(units > 0, rng.uniform(1, 9, (steps, n)) * np.maximum(units, 1), np.nan)
        got = _whole_covers(m, units, most)
        for step in range(steps):
            cost = np.where(units[step] > 0, m[step], np.inf)
            for need in range(1, most + 1):
                rows = cheapest_cover(need, units[step], cost)
                if units[step][rows].sum() >= need:
                    assert got[step, need] == pytest.approx(cost[rows].sum())
                else:
                    assert got[step, need] == np.inf

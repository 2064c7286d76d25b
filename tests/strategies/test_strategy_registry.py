import logging
from typing import Any, ClassVar

import numpy as np
import pytest

from strategies.base import DesiredBid, Strategy
from strategies.fixed import Fixed
from strategies.outbid import Outbid
from strategies.registry import (
    ENTRY_POINT_GROUP,
    StrategyError,
    available_strategies,
    load_strategy,
    parse_strategy_arg,
    safe_decide,
)

from strategy_views import make_view


class Steady(Strategy):
    name = "steady"

    def decide(self, view, **kwargs: Any):
        return []


class FromTheFuture(Steady):
    api_version: ClassVar[int] = 99


class FakeEntryPoint:
    def __init__(self, name: str, obj: object = None, error: Exception | None = None) -> None:
        self.name, self.value, self._obj, self._error = name, f"plugin:{name}", obj, error

    def load(self) -> object:
        if self._error:
            raise self._error
        return self._obj


def fake_entry_points(*eps: FakeEntryPoint):
    def entry_points(*, group: str):
        assert group == ENTRY_POINT_GROUP
        return list(eps)
    return entry_points


NONE_INSTALLED = fake_entry_points()


def test_builtins_load_by_name_with_their_parameters():
    s = load_strategy("outbid", {"tick": 0.5}, entry_points=NONE_INSTALLED)
    assert isinstance(s, Outbid) and s.params.tick == 0.5 and s.params.switch_margin == 0.1
    assert available_strategies(NONE_INSTALLED) == ["fixed", "percentile", "outbid", "profit"]


def test_module_and_class():
    s = load_strategy("strategies.fixed:Fixed", {"price_per_gpu_day": 3}, entry_points=NONE_INSTALLED)
    assert isinstance(s, Fixed) and s.params.price_per_gpu_day == 3.0


def test_entry_points_are_found_by_name():
    eps = fake_entry_points(FakeEntryPoint("steady", Steady))
    assert isinstance(load_strategy("steady", {}, entry_points=eps), Steady)
    assert available_strategies(eps)[-1] == "steady"


@pytest.mark.parametrize("spec, params, eps, message", [
    ("nope", {}, fake_entry_points(FakeEntryPoint("steady", Steady)),
     "unknown strategy 'nope'; available: fixed, percentile, outbid, profit, steady (or module:Class)"),
    ("outbid", {"tik": 1}, NONE_INSTALLED, "strategy 'outbid': parameter 'tik': Extra inputs"),
    ("outbid", {"tick": "fast"}, NONE_INSTALLED, "strategy 'outbid': parameter 'tick': Input should be"),
    ("fixed", {}, NONE_INSTALLED, "parameter 'price_per_gpu_day': Field required"),
    ("collections:OrderedDict", {}, NONE_INSTALLED, "not a subclass of strategies.base.Strategy"),
    ("no_such_module_xyz:Thing", {}, NONE_INSTALLED, "cannot import 'no_such_module_xyz'"),
    ("strategies.outbid:Nope", {}, NONE_INSTALLED, "module 'strategies.outbid' has no 'Nope'"),
    ("strategies.base:Strategy", {}, NONE_INSTALLED, "cannot be created: Can't instantiate abstract"),
    ("future", {}, fake_entry_points(FakeEntryPoint("future", FromTheFuture)),
     "written for strategy API version 99; this bot supports version 1"),
    ("broken", {}, fake_entry_points(FakeEntryPoint("broken", error=ImportError("no numpy 9"))),
     "entry point 'plugin:broken' failed to load: no numpy 9"),
])
def test_load_errors_say_what_is_wrong(spec, params, eps, message):
    with pytest.raises(StrategyError) as err:
        load_strategy(spec, params, entry_points=eps)
    assert message in str(err.value)


@pytest.mark.parametrize("arg, expected", [
    ("outbid", ("outbid", {})),
    ("outbid:tick=0.5,switch_margin=0.1", ("outbid", {"tick": 0.5, "switch_margin": 0.1})),
    ("profit:revenue_per_gpu_day=2, revenue_currency=USD", ("profit", {"revenue_per_gpu_day": 2,
                                                                      "revenue_currency": "USD"})),
    ("pkg.mod:Cls", ("pkg.mod:Cls", {})),
    ('pkg.mod:Cls:flag=true,name="x,y"', None),
    ("pkg.mod:Cls:flag=true", ("pkg.mod:Cls", {"flag": True})),
])
def test_parse_strategy_arg(arg, expected):
    if expected is None:
        with pytest.raises(StrategyError, match="expected name=value"):
            parse_strategy_arg(arg)
    else:
        assert parse_strategy_arg(arg) == expected


# --- safe_decide ----------------------------------------------------------------------------------


class Returns(Strategy):
    name = "returns"

    def __init__(self, result: object) -> None:
        super().__init__()
        self.result = result

    def decide(self, view, **kwargs: Any):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


VIEW = make_view([{"id": 1}, {"id": 2}])
LOG = logging.getLogger("test.strategies")


def test_safe_decide_passes_good_decisions_through_as_plain_values():
    out = safe_decide(Returns([DesiredBid(np.int64(2), np.float64(12.5))]), VIEW, LOG)
    assert out == [DesiredBid(2, 12.5)]
    assert type(out[0].server_id) is int and type(out[0].price) is float
    assert safe_decide(Returns(None), VIEW, LOG) is None
    assert safe_decide(Returns([]), VIEW, LOG) == []


def test_safe_decide_swallows_a_raising_strategy_and_logs_the_target(caplog):
    with caplog.at_level(logging.ERROR):
        assert safe_decide(Returns(ZeroDivisionError("oops")), VIEW, LOG) is None
    assert "strategy 'returns' failed for target 't'" in caplog.text and "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize("result, problem", [
    ("hold everything", "expected a list of DesiredBid or None, got str"),
    ([(1, 12.0)], "expected DesiredBid items, got tuple"),
    ([DesiredBid(1, float("nan"))], "price nan for server 1 is not a positive number"),
    ([DesiredBid(1, -3.0)], "price -3.0 for server 1"),
    ([DesiredBid(1, float("inf"))], "price inf for server 1"),
    ([DesiredBid(np.int64(1), np.float64("nan"))], "for server 1 is not a positive number"),
    ([DesiredBid(1, True)], "price True for server 1"),
    ([DesiredBid(True, 12.0)], "server id True is not an integer"),
    ([DesiredBid(7, 12.0)], "server 7 is not a candidate of this target"),
    ([DesiredBid(1, 12.0), DesiredBid(1, 13.0)], "server 1 is listed twice"),
])
def test_safe_decide_refuses_garbage(result, problem, caplog):
    with caplog.at_level(logging.ERROR):
        assert safe_decide(Returns(result), VIEW, LOG) is None
    assert "unusable decision for target 't'" in caplog.text and problem in caplog.text


USER_STRATEGY = '''
from pydantic import Field
from strategies.base import Params, Strategy


class Margin(Strategy):
    name = "margin"

    class Params(Params):
        above: float = Field(0.05, gt=0, lt=1)

    def decide(self, view, **kwargs):
        return []
'''


@pytest.fixture
def strategy_folder(tmp_path, monkeypatch):
    """A folder holding my_strategies_<test>.py, made the current folder, and a sys.path that does
    not contain it (as under the installed ``bidder`` script)."""
    (tmp_path / "my_user_strats.py").write_text(USER_STRATEGY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path
                                     if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(__import__("sys").modules, "my_user_strats", raising=False)
    return tmp_path


def test_a_user_strategy_loads_from_the_current_folder(strategy_folder):
    s = load_strategy("my_user_strats:Margin", {"above": 0.2}, entry_points=NONE_INSTALLED)
    assert type(s).__name__ == "Margin" and s.params.above == 0.2
    assert str(strategy_folder) not in __import__("sys").path  # only for the import


@pytest.mark.parametrize("path", ["./my_user_strats.py", "{folder}/my_user_strats.py"])
def test_a_user_strategy_loads_from_a_file_path(strategy_folder, path):
    spec = path.format(folder=strategy_folder) + ":Margin"
    s = load_strategy(spec, {}, entry_points=NONE_INSTALLED)
    assert type(s).__name__ == "Margin" and s.params.above == 0.05
    with pytest.raises(StrategyError, match="parameter 'above'"):
        load_strategy(spec, {"above": 2}, entry_points=NONE_INSTALLED)


def test_a_missing_strategy_file_or_module_is_named(strategy_folder):
    with pytest.raises(StrategyError, match=r"no file .*nothere\.py"):
        load_strategy("./nothere.py:Margin", {}, entry_points=NONE_INSTALLED)
    with pytest.raises(StrategyError, match="cannot import 'nothere'.*current folder"):
        load_strategy("nothere:Margin", {}, entry_points=NONE_INSTALLED)
    (strategy_folder / "broken.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(StrategyError, match="no_such_dependency_xyz"):
        load_strategy("./broken.py:Margin", {}, entry_points=NONE_INSTALLED)

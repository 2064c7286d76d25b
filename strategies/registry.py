"""Finding strategies by name, and calling them so that a broken one cannot hurt the bot.

A strategy is named in the config (``strategy = "outbid"``) or on the backtest command line
(``outbid:tick=0.5,switch_margin=0.1``) as one of:

- a built-in name: ``fixed``, ``percentile``, ``outbid``, ``profit``;
- ``package.module:ClassName``, imported as is;
- a name registered by an installed package under the entry-point group ``bidder.strategies``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import math
import numbers
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from strategies.base import STRATEGY_API_VERSION, DesiredBid, Strategy, TargetView
from strategies.fixed import Fixed
from strategies.outbid import Outbid
from strategies.percentile import Percentile
from strategies.profit import Profit

ENTRY_POINT_GROUP = "bidder.strategies"
BUILTINS: Mapping[str, type[Strategy]] = {s.name: s for s in (Fixed, Percentile, Outbid, Profit)}

EntryPoints = Callable[..., Iterable[importlib.metadata.EntryPoint]]
"""``importlib.metadata.entry_points`` or a stand-in with the same ``group=`` keyword."""


class StrategyError(ValueError):
    """A strategy that cannot be loaded or configured; the message says what and why."""


def available_strategies(entry_points: EntryPoints = importlib.metadata.entry_points) -> list[str]:
    """Built-in names, then the names installed packages register."""
    return [*BUILTINS, *sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
                               if ep.name not in BUILTINS)]


def load_strategy(spec: str, params: Mapping[str, Any], *,
                  entry_points: EntryPoints = importlib.metadata.entry_points) -> Strategy:
    """An instance of the strategy ``spec`` configured with ``params``."""
    cls = _resolve(spec, entry_points)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyError(f"strategy {spec!r} is {cls!r}, not a subclass of "
                            "strategies.base.Strategy")
    if cls.api_version != STRATEGY_API_VERSION:
        raise StrategyError(f"strategy {spec!r} is written for strategy API version "
                            f"{cls.api_version}; this bot supports version {STRATEGY_API_VERSION}")
    try:
        return cls(**params)
    except TypeError as err:  # e.g. ``decide`` not implemented
        raise StrategyError(f"strategy {spec!r} cannot be created: {err}") from None
    except ValidationError as err:
        problems = "; ".join(f"parameter {'.'.join(map(str, e['loc'])) or '(all)'!r}: {e['msg']}"
                             for e in err.errors())
        raise StrategyError(f"strategy {spec!r}: {problems}") from None


def _resolve(spec: str, entry_points: EntryPoints) -> object:
    if ":" in spec:
        module_name, _, attr = spec.rpartition(":")
        module = _user_module(spec, module_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise StrategyError(f"strategy {spec!r}: module {module_name!r} has no {attr!r}") \
                from None
    if spec in BUILTINS:
        return BUILTINS[spec]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                return ep.load()
            except Exception as err:  # a broken plug-in package: say which one
                raise StrategyError(f"strategy {spec!r}: entry point {ep.value!r} failed to load: "
                                    f"{err}") from None
    raise StrategyError(f"unknown strategy {spec!r}; available: "
                        f"{', '.join(available_strategies(entry_points))} (or module:Class)")


def _user_module(spec: str, module_name: str) -> ModuleType:
    """The module of a ``module:Class`` strategy: a file (``./my_strategies.py``), an importable
    module, or a module in the current folder (the ``bidder`` script does not put the current
    folder on ``sys.path``, so a strategy beside the config would otherwise not be found)."""
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        return _module_from_file(spec, Path(module_name))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name.partition(".")[0]:
            raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: {err}") \
                from None
    except ImportError as err:
        raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: {err}") from None
    cwd = os.getcwd()
    if cwd in sys.path:
        raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: no such module "
                            f"installed or in the current folder {cwd}") from None
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name.partition(".")[0]:
            raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: no such "
                                f"module installed or in the current folder {cwd}") from None
        raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: {err}") from None
    except ImportError as err:
        raise StrategyError(f"strategy {spec!r}: cannot import {module_name!r}: {err}") from None
    finally:
        sys.path.remove(cwd)


def _module_from_file(spec: str, path: Path) -> ModuleType:
    """The strategy file at ``path``, loaded once as a module named after the file."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise StrategyError(f"strategy {spec!r}: no file {path}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise StrategyError(f"strategy {spec!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # pydantic and dataclasses look their module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise StrategyError(f"strategy {spec!r}: loading {path} failed: "
                            f"{type(err).__name__}: {err}") from None
    return module


def parse_strategy_arg(arg: str) -> tuple[str, dict[str, Any]]:
    """Split a command-line strategy into its name and parameters.

    ``"outbid:tick=0.5,switch_margin=0.1"`` -> ``("outbid", {"tick": 0.5, "switch_margin": 0.1})``

    Values are TOML scalars (``0.5``, ``true``, ``"text"``); anything else is a bare string.
    The name may itself be ``module:Class``: parameters follow the last colon and contain ``=``.
    """
    name, sep, rest = arg.rpartition(":")
    if not sep or "=" not in rest:
        return arg, {}
    params: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not key or not eq:
            raise StrategyError(f"strategy argument {arg!r}: expected name=value, got {item!r}")
        params[key] = _toml_scalar(value)
    return name, params


def _toml_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def safe_decide(strategy: Strategy, view: TargetView,
                logger: logging.Logger) -> list[DesiredBid] | None:
    """``strategy.decide(view)``, or None ("no change") when it raises or returns something that is
    not a list of DesiredBid on known servers at finite positive prices; the fault is logged with
    the target's name."""
    target = view.target.name
    try:
        result = strategy.decide(view)
    except Exception:
        logger.exception("strategy %r failed for target %r; no change this tick",
                         _label(strategy), target)
        return None
    if result is None:
        return None
    try:
        return _checked(result, view)
    except ValueError as err:
        logger.error("strategy %r returned an unusable decision for target %r (%s); "
                     "no change this tick", _label(strategy), target, err)
        return None


def _label(strategy: Strategy) -> str:
    return strategy.name or type(strategy).__name__


def _checked(result: object, view: TargetView) -> list[DesiredBid]:
    if not isinstance(result, (list, tuple)):
        raise ValueError(f"expected a list of DesiredBid or None, got {type(result).__name__}")
    row = view.candidates.row
    bids: dict[int, DesiredBid] = {}
    for item in result:
        bid = item if _plain(item) else _normalised(item)
        sid = bid.server_id
        if not 0.0 < bid.price < math.inf:  # NaN fails too
            raise ValueError(f"price {item.price!r} for server {sid} is not a positive number")
        if row(sid) is None:
            raise ValueError(f"server {sid} is not a candidate of this target")
        if sid in bids:
            raise ValueError(f"server {sid} is listed twice")
        bids[sid] = bid
    return list(bids.values())


def _plain(item: object) -> bool:
    """A ``DesiredBid`` of an ``int`` id and a ``float`` price, as the built-ins make them: the
    common case, checked first and kept as it is."""
    return type(item) is DesiredBid and type(item.server_id) is int and type(item.price) is float


def _normalised(item: object) -> DesiredBid:
    """``item`` with a plain ``int`` id and ``float`` price (numpy scalars, subclasses), or a
    ``ValueError`` saying why it cannot be."""
    if not isinstance(item, DesiredBid):
        raise ValueError(f"expected DesiredBid items, got {type(item).__name__}")
    sid, price = item.server_id, item.price
    if not _is_integer(sid):
        raise ValueError(f"server id {sid!r} is not an integer")
    if not _is_number(price):
        raise ValueError(f"price {price!r} for server {sid} is not a positive number")
    return DesiredBid(int(sid), float(price))


# exact types first: the abstract-class checks cost more than the rest of a bid's checks

def _is_integer(x: object) -> bool:
    return type(x) is int or (not isinstance(x, bool) and isinstance(x, numbers.Integral))


def _is_number(x: object) -> bool:
    return type(x) is float or (not isinstance(x, bool) and isinstance(x, numbers.Real))

"""A SQLite history is read and reduced in two processes, one per half of the candidates: the
halves must make exactly the history one process makes."""

import pytest

from bidder.backtest import data
from bidder.backtest.data import load_history
from bidder.config import parse_config
from storage.db import open_database

from synthetic_market import history_digest, write_market

TARGETS = parse_config({"targets": [
    {"name": "any", "market": "gigaspot", "count": 4, "max_price_per_gpu_day": 20,
     "oc": {"pl": 200}}]}).targets


@pytest.mark.parametrize("allocation", ["host_profit", "highest_price"])
def test_two_halves_load_what_one_process_loads(tmp_path, monkeypatch, allocation):
    path = tmp_path / "h.db"
    write_market(path, snapshots=240, machines=30, seed=9)

    def load():
        with open_database(f"sqlite:///{path}", writer=False) as db, db.sessions() as session:
            return load_history(session, TARGETS, allocation=allocation)

    monkeypatch.setattr(data, "PARALLEL_READ_MIN", 10**9)
    whole = load()
    monkeypatch.setattr(data, "PARALLEL_READ_MIN", 2)
    parts = []
    monkeypatch.setattr(data, "_parts", _counting(data._parts, parts))
    halves = load()
    assert parts == [2], "the candidates were not split between two processes"
    assert whole.markets["gigaspot"].n_servers == 30
    assert len(whole.markets["gigaspot"].rivals) > 0
    assert history_digest(halves) == history_digest(whole)


def _counting(function, counts):
    def counted(*args):
        result = function(*args)
        counts.append(len(result))
        return result
    return counted

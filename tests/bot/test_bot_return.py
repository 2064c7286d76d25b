"""Coming back to a server the bot had to leave: an outage forces a move to a stand-in a little
dearer; once the server is back (and the rebuy block over) the bot returns to it, where a server
it left by choice must still beat the stand-in by the switch margin. Live, after a restart (the
database remembers why each server was left) and in ``--replay-diff`` alike."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bidder.backtest.replay_diff import load_run, replay_diff
from bidder.backtest.runner import RunSettings
from bidder.config import CLORE
from bidder.orders import RETURN_HELD, RETURN_WINDOW, left_unusable
from bot_helpers import START, assert_invariants, make_config, ours, spot_target
from storage.models import BotOrder

CHEAPEST, STAND_IN = 1084, 1023
"""The quiet market's cheapest spot server (floor 11.1014) and one made 6 % dearer: within the
switch margin (10 %)."""
FLOOR = 11.1014


def holding(r):
    return sorted(o.venue_id for o in ours(r.market) if o.open)


def closed(database):
    with database.sessions() as session:
        return [(o.server_id, o.close_reason) for o in session.scalars(
            select(BotOrder).where(BotOrder.closed_at.is_not(None)).order_by(BotOrder.closed_at))]


def start(rig):
    r = rig(make_config(spot_target(), bot={"decide_interval": 60.0}))
    r.market.server(STAND_IN).floors[CLORE] = round(FLOOR * 1.06, 4)
    r.start()
    r.run(2 * 3600)  # held long enough (RETURN_HELD) to be a server worth coming back to
    assert holding(r) == [CHEAPEST]
    return r


@pytest.mark.parametrize("restart", [False, True])
def test_after_an_outage_the_bot_returns_to_the_server_it_had_to_leave(rig, database, restart):
    r = start(rig)
    r.market.set_online(CHEAPEST, False)
    r.run(600)
    assert holding(r) == [STAND_IN]
    assert closed(database) == [(CHEAPEST, "cancelled (unusable)")]
    r.market.set_online(CHEAPEST, True)
    if restart:
        r.restart()
    r.run(1800)
    assert holding(r) == [STAND_IN]  # the rebuy block: not within an hour of leaving it
    r.run(1800)
    assert holding(r) == [CHEAPEST]  # 6 % cheaper: not enough for a move, but it was ours
    assert closed(database)[-1] == (STAND_IN, "cancelled (not wanted)")
    assert_invariants(r.market, database)
    with database.sessions() as session:
        for run_id in ((1, 2) if restart else (1,)):
            diff = replay_diff(session, load_run(session, run_id), RunSettings())
            assert diff.differences == [], (run_id, diff.differences[:2])


def test_a_server_left_by_choice_must_beat_the_stand_in_by_the_margin(rig, database):
    r = start(rig)
    r.market.server(CHEAPEST).floors[CLORE] = round(FLOOR * 1.3, 4)  # its host asks more
    r.run(600)
    assert holding(r) == [STAND_IN]
    assert closed(database) == [(CHEAPEST, "cancelled (not wanted)")]
    r.market.server(CHEAPEST).floors[CLORE] = FLOOR  # and changes his mind
    r.run(3 * 3600)
    assert holding(r) == [STAND_IN]
    assert_invariants(r.market, database)


def test_which_servers_are_ones_to_return_to(database):
    """The last cancel on a server within ``RETURN_WINDOW`` decides, and it counts only after the
    order had held the server ``RETURN_HELD``; of two at once (a duplicate's), by choice wins."""
    def cancelled(server_id, closed_at, reason, held=RETURN_HELD):
        return BotOrder(target="s", market="spot", server_id=server_id, order_id=None,
                        state="closed", price=5.0, currency=CLORE, gpus=1,
                        created_at=closed_at - held, closed_at=closed_at,
                        close_reason=f"cancelled ({reason})", adopted=False, dry_run=False,
                        lookups=0)

    now = START + RETURN_WINDOW
    with database.sessions.begin() as session:
        session.add_all([
            cancelled(1, START + 100, "unusable"),  # to return to
            cancelled(2, START + 100, "unusable"), cancelled(2, START + 200, "not wanted"),
            cancelled(3, START + 100, "not wanted"), cancelled(3, START + 200, "unusable"),
            cancelled(4, START + 100, "unusable", held=RETURN_HELD - 1),  # it flickered
            cancelled(5, START - 1, "unusable"),  # too long ago
            cancelled(6, START + 300, "unusable"), cancelled(6, START + 300, "duplicate"),
        ])
    with database.sessions() as session:
        found = left_unusable(session, "s", now - RETURN_WINDOW, dry_run=False)
        assert found == {1: START + 100, 3: START + 200}
        assert left_unusable(session, "s", now - RETURN_WINDOW, dry_run=True) == {}
        assert left_unusable(session, "s", now - RETURN_WINDOW, dry_run=False,
                             before=START + 150) == {1: START + 100, 2: START + 100}

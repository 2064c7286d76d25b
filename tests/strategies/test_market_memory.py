"""Market memory: rival raises and changes of hands per server, and outbid leaving a server whose
rival answers every raise for a near-equal quiet one."""

from dataclasses import replace

import numpy as np
import pytest

from bidder.memory import MarketMemory
from strategies.outbid import Outbid

from strategy_views import NOW, bids, held, make_view


def test_raises_and_changes_of_hands_are_counted_per_server():
    memory = MarketMemory(half_life=1e9)  # no decay within the test
    ids = np.array([7, 3])
    memory.observe(NOW, ids, np.array([5.0, np.nan]))  # first look: no events
    for k in range(1, 7):  # an hour: server 7's rival raises every 10 minutes
        memory.observe(NOW + 600 * k, ids, np.array([5.0 + k, np.nan]))
    raises, hands, _, falls, _ = memory.observe(NOW + 3600, np.array([3, 7, 9]),
                                             np.array([4.0, 11.0, 2.0]))  # 3 gets a rival, 9 new
    assert raises.tolist() == pytest.approx([0.0, 6.0, 0.0], abs=0.01)
    assert hands.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.01)
    assert falls.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.01)  # an arrival is no fall


def test_a_rival_coming_and_going_changes_hands_but_only_a_lower_price_is_a_fall():
    memory = MarketMemory(half_life=1e9)
    ids = np.array([1, 2])
    memory.observe(NOW, ids, np.array([10.0, 10.0]))
    contest = None
    for k in range(1, 7):  # an hour: 1's rival steps down every 10 minutes; 2's comes and goes
        contest = memory.observe(NOW + 600 * k, ids,
                                 np.array([10.0 * 0.9 ** k, np.nan if k % 2 else 10.0]))
    assert contest.falls_per_hour.tolist() == pytest.approx([6.0, 0.0], abs=0.01)
    assert contest.hands_per_hour.tolist() == pytest.approx([6.0, 6.0], abs=0.01)
    assert contest.raises_per_hour.tolist() == pytest.approx([0.0, 0.0], abs=0.01)


def test_old_events_fade():
    memory = MarketMemory(half_life=3600.0)
    memory.observe(NOW, np.array([1]), np.array([1.0]))
    memory.observe(NOW + 60, np.array([1]), np.array([2.0]))
    early = memory.observe(NOW + 120, np.array([1]), np.array([2.0])).raises_per_hour
    late = memory.observe(NOW + 120 + 6 * 3600, np.array([1]), np.array([2.0])).raises_per_hour
    assert late[0] < early[0] / 10


def test_outbid_with_a_contest_penalty_leaves_a_ratchet_for_a_quiet_server():
    rows = [{"id": 1, "threshold": 12.0}, {"id": 2, "threshold": 12.2}]
    view = make_view(rows, orders=(held(1, 12.5, state="outbid"),))
    contested = replace(view, candidates=replace(
        view.candidates, raises_per_hour=np.array([6.0, 0.0]), hands_per_hour=np.zeros(2)))
    plain = Outbid(tick=0.5, switch_margin=0.1, contested_at=0)
    assert not plain.uses_memory
    assert bids(plain.decide(contested)) == {1: 12.5}  # keeps escalating
    wary = Outbid(tick=0.5, switch_margin=0.1, contest_penalty=0.05)
    assert wary.uses_memory
    assert bids(wary.decide(contested)) == {2: 12.7}
    assert bids(wary.decide(view)) == {1: 12.5}  # without memory: as before


def test_a_new_order_on_a_contested_server_must_repay_its_fee_before_the_next_raise():
    # server 1 wins at 12.1 but its rival raises twice an hour; server 2 is quiet at 12.3. With a
    # creation fee of 0.01, a new order on 1 must earn it back in half an hour (0.48 a day on top),
    # on 2 within payback_hours (0.02 a day): the quiet one is cheaper to hold
    rows = [{"id": 1, "threshold": 11.6}, {"id": 2, "threshold": 11.8}]
    view = make_view(rows)
    view = replace(view, target=replace(view.target, creation_fee=0.01),
                   candidates=replace(view.candidates, raises_per_hour=np.array([2.0, 0.0]),
                                      hands_per_hour=np.zeros(2)))
    assert bids(Outbid(tick=0.5, contested_at=0).decide(view)) == {1: 12.1}  # the price alone
    # the raise rate counts only through the fee
    wary = Outbid(tick=0.5, contest_penalty=1e-6, contested_at=0)
    assert bids(wary.decide(view)) == {2: 12.3}
    calm = replace(view, candidates=replace(view.candidates, raises_per_hour=np.zeros(2)))
    assert bids(wary.decide(calm)) == {1: 12.1}


def test_the_rival_high_is_the_best_rivals_highest_price_over_the_window():
    memory = MarketMemory(half_life=1e9, high_window=3600.0)  # buckets of 10 minutes
    ids = np.array([1, 2])
    high = None
    for k, price in enumerate([9.0, 20.0, 18.0, 16.2, 14.6]):  # a saw on 1; 2 has no rival
        high = memory.observe(NOW + 600 * k, ids, np.array([price, np.nan])).rival_high
    assert high[0] == pytest.approx(20.0)
    assert np.isnan(high[1])
    # over an hour after the jump, only the fall is left in the window
    for k in range(5, 10):
        high = memory.observe(NOW + 600 * k, ids, np.array([14.6 * 0.9 ** (k - 4), 3.0])
                              ).rival_high
    # the window is whole buckets: the last hour to hour and ten minutes (the price 60 minutes ago)
    assert high[0] == pytest.approx(16.2)
    assert high[1] == pytest.approx(3.0)
    # a server seen for the first time has only its price now
    assert memory.observe(NOW + 6000, np.array([5]), np.array([4.0])).rival_high[0] == 4.0


def _contested(view, moves, high, falls_per_raise=5.0, comings_and_goings=0.0):
    """``moves`` an hour on each server, split into raises and falls as a saw's are (a ratchet
    bot steps down about five times for each jump back up), and ``comings_and_goings`` an hour of
    a rival arriving or leaving (hands changing without a fall)."""
    moves = np.array(moves, dtype=float)
    raises = moves / (1.0 + falls_per_raise)
    return replace(view, candidates=replace(
        view.candidates, raises_per_hour=raises, falls_per_hour=moves - raises,
        hands_per_hour=moves - raises + comings_and_goings,
        rival_high=np.array(high, dtype=float)))


def test_outbid_values_a_contested_server_at_its_rivals_recent_high():
    # server 1 wins now at 10.5 but its rival is a saw that went up to 16 lately; server 2's rival
    # is quiet at 12: holding 1 costs 16.5, holding 2 costs 12.5
    rows = [{"id": 1, "threshold": 10.0}, {"id": 2, "threshold": 12.0}]
    view = _contested(make_view(rows), moves=[7.0, 0.0], high=[16.0, 12.0])
    # without market memory: the trough, lost at the next jump
    assert bids(Outbid(tick=0.5, contested_at=0).decide(view)) == {1: 10.5}
    holder = Outbid(tick=0.5)  # the default: contested_at=2
    assert holder.uses_memory and holder.params.contested_at == 2.0
    assert bids(holder.decide(view)) == {2: 12.5}
    # where the contested server is still the cheapest to hold, bid above the rival's high, so
    # its next jump back up does not take the server
    cheap = _contested(make_view(rows), moves=[7.0, 0.0], high=[11.0, 12.0])
    assert bids(holder.decide(cheap)) == {1: 11.5}
    # a rival that repriced once lately is no ratchet: the price now counts
    calm = _contested(make_view(rows), moves=[0.3, 0.0], high=[16.0, 12.0])
    assert bids(holder.decide(calm)) == {1: 10.5}


def test_a_fall_or_two_on_a_server_just_seen_is_no_saw_three_are():
    """A rate from one fall on a server watched for a minute is 60 an hour: ``SAW_EVIDENCE``
    wants falls adding up to 2 after decay (a third, unless two came at once) before outbid holds
    above the rival's high."""
    memory = MarketMemory()
    views = []
    for k, rival in enumerate([14.0, 13.0, 12.0, 11.0]):  # a ratchet stepping down from its top
        contest = memory.observe(NOW + 600 * k, np.array([1, 2]), np.array([rival, 15.0]))
        view = make_view([{"id": 1, "threshold": rival}, {"id": 2, "threshold": 15.0}])
        views.append(replace(view, candidates=replace(view.candidates, **contest._asdict())))
    one, two, three = views[1:]
    assert one.candidates.falls_per_hour[0] == pytest.approx(6.0, rel=0.01)
    assert one.candidates.falls_seen[0] == pytest.approx(1.0, rel=0.01)
    assert two.candidates.falls_seen[0] == pytest.approx(1.98, rel=0.01)
    assert bids(Outbid(tick=0.5).decide(one)) == {1: 13.5}  # its price now counts
    assert bids(Outbid(tick=0.5).decide(two)) == {1: 12.5}
    # three falls: a saw, held above its high (14.5), still cheaper than the quiet server (15.5)
    assert three.candidates.falls_seen[0] > 2.0
    assert bids(Outbid(tick=0.5).decide(three)) == {1: 14.5}
    assert bids(Outbid(tick=0.5, contested_at=0).decide(three)) == {1: 11.5}


def test_a_rival_jittering_up_as_often_as_down_is_no_saw_its_price_now_counts():
    """Holding above a six-hour high pays only against a saw; a rival repricing at random moves
    up as often as down, and its high is noise above its price."""
    rows = [{"id": 1, "threshold": 10.0}, {"id": 2, "threshold": 12.0}]
    jitter = _contested(make_view(rows), moves=[7.0, 0.0], high=[16.0, 12.0], falls_per_raise=1.0)
    assert bids(Outbid(tick=0.5, contested_at=2.0).decide(jitter)) == {1: 10.5}
    saw = _contested(make_view(rows), moves=[7.0, 0.0], high=[16.0, 12.0], falls_per_raise=3.0)
    assert bids(Outbid(tick=0.5, contested_at=2.0).decide(saw)) == {2: 12.5}


def test_a_rival_coming_and_going_is_no_saw_its_price_now_counts():
    """A flickering listing changes hands every few minutes without ever stepping down: it does
    not make a server contested (it made the memory setting 71 % dearer per held step on the
    regression fixture's spot market, whose rivals come and go at random)."""
    rows = [{"id": 1, "threshold": 10.0}, {"id": 2, "threshold": 12.0}]
    holder = Outbid(tick=0.5, contested_at=2.0)
    flicker = _contested(make_view(rows), moves=[0.6, 0.0], high=[16.0, 12.0],
                         comings_and_goings=6.0)
    assert bids(holder.decide(flicker)) == {1: 10.5}
    # the same hands, as steps down: a saw
    saw = _contested(make_view(rows), moves=[6.6, 0.0], high=[16.0, 12.0])
    assert bids(holder.decide(saw)) == {2: 12.5}


def test_outbid_holding_above_a_high_never_bids_over_the_cap():
    rows = [{"id": 1, "threshold": 20.0}]
    view = _contested(make_view(rows, cap_per_gpu_day=25.0), moves=[7.0], high=[40.0])
    assert bids(Outbid(tick=0.5, contested_at=2.0).decide(view)) == {1: 25.0}


def test_rates_stay_exact_over_months_and_candidate_sets_that_change():
    """The counts are kept against a moving time origin (``REBASE``): over 300 days with a
    one-day half-life it moves twice, and every rate still equals the decayed sum worked out
    directly from the events."""
    half_life = 86_400.0
    memory = MarketMemory(half_life=half_life)
    tau = half_life / np.log(2.0)
    start, events = NOW, []
    price = 10.0
    for k in range(1, 300 * 4 + 1):  # every 6 hours; the rival raises every fourth look
        now = start + k * 6 * 3600.0
        ids = np.array([1, 2]) if k % 3 else np.array([1])  # server 2 comes and goes from view
        if k % 4 == 0:
            price += 1.0
            events.append(now)
        contest = memory.observe(now, ids, np.full(len(ids), price))
        if k in (1, 400, 799, 1200):
            decayed = sum(np.exp(-(now - t) / tau) for t in events)
            watched = tau * -np.expm1(-(now - (start + 6 * 3600.0)) / tau)
            per_hour = decayed / (max(watched, 60.0) / 3600.0)
            assert contest.raises_per_hour[0] == pytest.approx(per_hour, rel=1e-9)
    assert memory._t0 is not None and memory._t0 > start + 200 * 86_400.0  # it moved

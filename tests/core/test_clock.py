import time

import pytest
from freezegun import freeze_time

from bidder.clock import ManualClock, ScaledClock, SystemClock


def test_manual_clock_sleep_advances_and_never_goes_back():
    c = ManualClock(100.0)
    c.sleep(2.5)
    assert c.now() == 102.5
    c.sleep(-1)  # a negative wait is no wait
    assert c.now() == 102.5
    with pytest.raises(ValueError):
        c.set(50)
    with pytest.raises(ValueError):
        c.advance(-1)
    c.set(200)
    assert c.now() == 200


def test_system_clock_follows_freezegun():
    with freeze_time("2026-01-01 00:00:00"):
        assert SystemClock().now() == 1767225600.0


def test_scaled_clock_runs_faster_than_real_time():
    with freeze_time("2026-01-01 00:00:00") as frozen:
        c = ScaledClock(60, start=1000.0)
        assert c.now() == pytest.approx(1000.0, abs=1.0)
    # monotonic is not frozen: measure the scale over a short real interval
    c = ScaledClock(1000, start=0.0)
    t0, m0 = c.now(), time.monotonic()
    while time.monotonic() - m0 < 0.01:
        pass
    assert c.now() - t0 >= 10.0
    with pytest.raises(ValueError):
        ScaledClock(0)

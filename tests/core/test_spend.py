"""``bidder.spend.cost_per_day``: the one conversion of an order's daily price (with the
exchange's fee) into the budget's currency, used by the bot's budget and by ``bidder status``."""

from __future__ import annotations

import math

import pytest

from bidder.spend import cost_per_day

RATES = {"CLORE-Blockchain": 0.03, "bitcoin": 60_000.0, "USD": 1.0}


def test_same_currency_needs_no_rate():
    assert cost_per_day(10.0, 0.05, "CLORE-Blockchain", "CLORE-Blockchain", {}.get) == \
        pytest.approx(10.5)


def test_other_currencies_convert_through_usd():
    assert cost_per_day(100.0, 0.1, "CLORE-Blockchain", "USD", RATES.get) == pytest.approx(3.3)
    assert cost_per_day(1e-4, 0.0, "bitcoin", "CLORE-Blockchain", RATES.get) == pytest.approx(200.0)


@pytest.mark.parametrize("rates", [{}, {"bitcoin": 0.0, "USD": 1.0},
                                   {"bitcoin": math.inf, "USD": 1.0}, {"bitcoin": math.nan}])
def test_an_unknown_rate_is_nan_never_free(rates):
    assert math.isnan(cost_per_day(1.0, 0.0, "bitcoin", "USD", rates.get))

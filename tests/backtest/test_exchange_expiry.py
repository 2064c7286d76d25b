"""GigaSPOT orders on the emulated exchange end by themselves after ``gigaspot_max_life``."""

from bidder.backtest.exchange import EmulatedExchange, ExchangeRules
from bidder.config import parse_config
from bidder.rules import Create, Plan

LIFE = 1000.0


def exchange():
    markets = parse_config({"targets": [{"name": "t", "market": "gigaspot", "count": 1,
                                         "max_price_per_gpu_day": 10,
                                         "oc": {"pl": 200}}]}).markets
    return EmulatedExchange(ExchangeRules(gigaspot_max_life=LIFE, call_latency=0.0), markets,
                            [("t", "gigaspot", "CLORE-Blockchain")],
                            lambda market, server, currency: (server, 1, 1.0))


def create(ex, server, now):
    ex.apply(Plan(actions=(Create("t", server, 5.0),), deferred=()), now, tick=0)


def servers(ex):
    return sorted(o.server_id for o in ex.orders.values())


def test_orders_expire_at_their_maximum_life_and_not_before():
    ex = exchange()
    ex.expire(0.0)  # nothing to end yet
    create(ex, 1, now=0.0)
    create(ex, 2, now=300.0)
    ex.expire(LIFE - 1)
    assert servers(ex) == [1, 2]
    ex.expire(LIFE)
    assert servers(ex) == [2] and ex.counters("t").expired == 1
    create(ex, 3, now=LIFE + 10)  # a new order does not hide the older one's end
    ex.expire(LIFE + 299)
    assert servers(ex) == [2, 3]
    ex.expire(LIFE + 300)
    assert servers(ex) == [3]
    ex.expire(2 * LIFE + 10)
    assert servers(ex) == [] and ex.counters("t").expired == 3

"""Helpers of the client-against-sim tests: request builders, pickers, and a transport that lets
the market handle a request and then loses the reply."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from bidder.api.models import GigaspotOrderRequest, OcSetting, SpotOrderRequest
from bidder.sim import SimMarket
from bidder.sim.world import CLORE, Machine, SpotServer

START = 1_700_000_000.0
KEY = "IntegrationKey-Qw9Er8Ty7Ui6Op5"
BASE_URL = "http://sim.test/v1"


def public_servers(market: SimMarket) -> list[SpotServer]:
    return [s for s in market.world.servers.values() if s.visibility == "public" and s.rentable]


def rentable_machines(market: SimMarket) -> list[Machine]:
    return [m for m in market.world.machines.values() if m.rentable and m.working_properly]


def spot_order(server: SpotServer, price: float) -> SpotOrderRequest:
    return SpotOrderRequest(currency=CLORE, image="cloreai/ubuntu22.04-cuda12",
                            renting_server=server.id, spotprice=price)


def gigaspot_order(machine_id: int, gpus: int, price: float, pl: int) -> GigaspotOrderRequest:
    return GigaspotOrderRequest(image="cloreai/miner", renting_server=machine_id, price=price,
                                oc=[OcSetting(pl=pl) for _ in range(gpus)])


def lowest_pl(machine: Machine) -> int:
    return max(g["pl"][0] for g in machine.gpu_ranges)


class LosesReplies(httpx.BaseTransport):
    """Serves ``market``; for requests ``lose`` picks, the market handles the request but the reply
    never arrives (``httpx.ReadTimeout``): the request's outcome is hidden from the client."""

    def __init__(self, market: SimMarket, lose: Callable[[httpx.Request], bool]) -> None:
        self.market = market
        self.lose = lose

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self.market.handle(request)
        if self.lose(request):
            raise httpx.ReadTimeout("the read operation timed out", request=request)
        return response


def error_text(exc: BaseException) -> str:
    """Everything an error shows: message, repr, notes, and the same for its causes."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), *getattr(seen, "__notes__", [])]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)

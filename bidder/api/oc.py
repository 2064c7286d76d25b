"""The request bodies' base and a GigaSPOT order's overclock settings, apart from the reply
models: the config validates ``[targets.oc]`` with them, and building every reply model would
cost each command's start (``bidder status`` included). ``bidder.api.models`` re-exports both."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base of request bodies: unknown fields are refused so typos never reach the exchange."""

    model_config = ConfigDict(extra="forbid")


class OcSetting(Strict):
    """Overclock settings for one GPU of a GigaSPOT order; ``pl`` (watts) is required."""

    pl: int
    core_lock: int | None = None
    mem_lock: int | None = None
    mem_offset: int | None = None
    core_offset: int | None = None

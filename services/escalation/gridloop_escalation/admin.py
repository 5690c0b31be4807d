"""The test clock's handle: move the service's `now` instead of sleeping through a deadline.

Mounted only with GRIDLOOP_TEST_CLOCK=1 (otherwise the routes do not exist: 404).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gridloop_events.clock import OffsetClock


class ClockOffset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset_seconds: float = Field(ge=-10 * 365 * 86400, le=10 * 365 * 86400)

    @field_validator("offset_seconds")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("offset_seconds must be a finite number")
        return value


def create_clock_router(clock: OffsetClock) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["test clock"])

    def view() -> dict[str, Any]:
        return {"now": clock.now().isoformat(), "offset_seconds": clock.offset.total_seconds()}

    @router.get("/clock")
    async def read_clock() -> dict[str, Any]:
        return view()

    @router.post("/clock")
    async def set_clock(body: ClockOffset) -> dict[str, Any]:
        clock.set_offset(timedelta(seconds=body.offset_seconds))
        return view()

    return router

"""Time, behind an interface so that tests run the refresh loop on virtual time."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Unix time: what token deadlines are measured against."""

    def monotonic(self) -> float:
        """Seconds that never jump: what liveness is measured against."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks of this process."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

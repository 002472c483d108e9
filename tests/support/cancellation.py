"""Code that swallows its cancellation, as some client libraries do (nats-py, in places)."""

from __future__ import annotations

import asyncio
import contextlib


class Swallowing:
    """`work()` runs until `release` is set, swallowing every cancellation meanwhile."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = asyncio.Event()

    async def work(self) -> None:
        self.running.set()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()

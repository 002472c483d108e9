"""Bounded waiting for a condition (not a performance threshold: only a hang guard)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, within: float = 60.0, every: float = 0.05
) -> None:
    """Wait until `condition()` is true; fail the test if it is still false after `within`."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)

"""Bounded waits that hold even when the awaited code swallows a cancellation.

`asyncio.timeout` and `asyncio.wait_for` end a wait by cancelling the task that waits. Some
client libraries catch that `CancelledError` deep inside (nats-py does, in its flusher and
in `close()`), and the timeout then never fires: the wait goes on forever. These helpers
bound a wait with `asyncio.wait`, which stops waiting without cancelling the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def wait_until(event: asyncio.Event, deadline: float) -> bool:
    """Wait for `event` until the event loop's time reaches `deadline`; True if it is set."""
    if event.is_set():
        return True
    waiting = asyncio.ensure_future(event.wait())
    try:
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.wait({waiting}, timeout=max(remaining, 0.0))
    finally:
        waiting.cancel()
    return event.is_set()


async def settle_within(work: Coroutine[Any, Any, object], seconds: float) -> bool:
    """Run `work` for at most `seconds`; True if it finished (its error, if any, is raised).

    Past the bound, `work` is cancelled and left behind (not awaited: it may ignore the
    cancellation), and False is returned.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        return False
    task.result()
    return True

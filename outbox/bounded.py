"""Bounded waits that hold even when the awaited code swallows a cancellation.

`asyncio.timeout` and `asyncio.wait_for` end a wait by cancelling the task that waits. Some
client libraries catch that `CancelledError` deep inside (nats-py does, in its flusher and
in `close()`), and the timeout then never fires: the wait goes on forever. These helpers
bound a wait with `asyncio.wait`, which stops waiting without cancelling the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine
from logging import Logger
from typing import Any, NoReturn

from outboxkit.outbox.errors import ShutdownStuck

CANCEL_GRACE = 5.0  # seconds a cancelled task gets to end before it is left behind


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


async def stop_task(task: asyncio.Task[Any], seconds: float, *, grace: float) -> bool:
    """Wait up to `seconds` for `task` to end; then cancel it and wait up to `grace` more.

    True once the task has ended (its outcome stays in it); False if it is still running:
    it swallowed the cancellation, and is left behind. Never waits longer than both bounds.
    """
    await asyncio.wait({task}, timeout=seconds)
    if task.done():
        return True
    task.cancel()
    await asyncio.wait({task}, timeout=grace)
    return task.done()


async def drain(task: asyncio.Task[Any], seconds: float, *, what: str, log: Logger) -> None:
    """Give `task` (a stopping relay or consumer) `seconds` to finish, then cancel it.

    Raises the task's own error, or `ShutdownStuck` if it outlives its cancellation by
    `CANCEL_GRACE` seconds (it is then left behind).
    """
    if not await stop_task(task, seconds, grace=CANCEL_GRACE):
        log.critical(
            "%s did not stop within %g s of its cancellation (a client library may "
            "swallow it); leaving it behind",
            what,
            CANCEL_GRACE,
        )
        raise ShutdownStuck(f"{what} did not stop when cancelled")
    if task.cancelled():
        log.error("%s did not finish in %g s; abandoned", what, seconds)
        return
    task.result()


def run_or_exit(main: Coroutine[Any, Any, object]) -> None:
    """`asyncio.run(main)`, except that `ShutdownStuck` ends the process at once with its
    exit code: the event loop's own clean-up would wait, unbounded, for the stuck task."""

    async def guarded() -> None:
        try:
            await main
        except ShutdownStuck:
            exit_now(ShutdownStuck.exit_code)

    asyncio.run(guarded())


def exit_now(code: int) -> NoReturn:
    """End the process at once, logs flushed, no clean-up of the event loop or threads."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)

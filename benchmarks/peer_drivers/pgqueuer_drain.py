"""Drain COUNT jobs with pgqueuer's QueueManager (drain mode); see __init__.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import timedelta
from importlib.metadata import version
from typing import Any

import psycopg
from pgqueuer import PsycopgDriver, Queries, QueueManager  # type: ignore[import-not-found]
from pgqueuer.types import QueueExecutionMode  # type: ignore[import-not-found]

BATCH = 500


def payload(i: int) -> bytes:
    return b'{"order_id":%d,"total":%d,"note":"%s"}' % (i, (i * 7) % 1000, b"x" * 120)


async def main(dsn: str, count: int, budget: float) -> None:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    driver = PsycopgDriver(conn)
    queries = Queries(driver)
    await queries.install()
    for first in range(0, count, 1000):
        size = min(1000, count - first)
        await queries.enqueue(
            ["bench"] * size, [payload(i) for i in range(first, first + size)], [0] * size
        )
    handled = 0
    last = 0.0

    async def handle(job: Any) -> None:
        nonlocal handled, last
        handled += 1
        last = time.perf_counter()

    manager = QueueManager(queries)
    manager.entrypoint("bench")(handle)
    started = time.perf_counter()
    worker = manager.run(
        batch_size=BATCH, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1)
    )
    # Out of time: the rate is over the jobs handled so far.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(worker, budget)
    # Until the last job was handled: not counting the idle wait before the worker exits.
    seconds = last - started
    await conn.close()
    print(
        json.dumps(
            {
                "library": "pgqueuer",
                "version": version("pgqueuer"),
                "messages": handled,
                "seconds": seconds,
                "settings": f"QueueManager.run(batch_size={BATCH}, mode=drain), psycopg driver",
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if sys.argv[3:] else 1e9))

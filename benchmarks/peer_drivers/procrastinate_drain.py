"""Drain COUNT jobs with procrastinate's worker (wait=False); see __init__.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from importlib.metadata import version
from typing import Any

import procrastinate  # type: ignore[import-not-found]

CONCURRENCY = 10


async def main(dsn: str, count: int, budget: float) -> None:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    handled = 0
    last = 0.0

    async def bench(**kwargs: Any) -> None:
        nonlocal handled, last
        handled += 1
        last = time.perf_counter()

    task = app.task(name="bench", queue="bench")(bench)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for first in range(0, count, 1000):
            await task.batch_defer_async(
                *(
                    {"order_id": i, "total": (i * 7) % 1000, "note": "x" * 120}
                    for i in range(first, min(first + 1000, count))
                )
            )
        started = time.perf_counter()
        worker = app.run_worker_async(
            queues=["bench"], wait=False, concurrency=CONCURRENCY, install_signal_handlers=False
        )
        # Out of time: the rate is over the jobs handled so far.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker, budget)
        # Until the last job was handled: not counting the idle wait before the worker exits.
        seconds = last - started
    print(
        json.dumps(
            {
                "library": "procrastinate",
                "version": version("procrastinate"),
                "messages": handled,
                "seconds": seconds,
                "settings": f"run_worker_async(wait=False, concurrency={CONCURRENCY}), "
                "psycopg connector, default job retention",
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if sys.argv[3:] else 1e9))

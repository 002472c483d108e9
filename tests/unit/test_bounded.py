"""Bounded stops: a task that swallows its cancellation is left behind, never waited on."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest

from outboxkit.outbox import bounded
from outboxkit.outbox.bounded import drain, stop_task
from outboxkit.outbox.errors import ShutdownStuck
from tests.support.cancellation import Swallowing

log = logging.getLogger("tests.bounded")


async def slow() -> None:
    await asyncio.sleep(60)


async def failing() -> None:
    await asyncio.sleep(0)
    raise ValueError("the runner failed")


async def test_a_task_that_finishes_in_time_is_not_cancelled() -> None:
    task = asyncio.create_task(asyncio.sleep(0.01))
    assert await stop_task(task, 5, grace=5)
    assert not task.cancelled()


async def test_a_slow_task_is_cancelled_after_the_bound() -> None:
    task = asyncio.create_task(slow())
    assert await stop_task(task, 0.05, grace=5)
    assert task.cancelled()


async def test_a_task_that_swallows_its_cancellation_is_left_behind() -> None:
    stuck = Swallowing()
    task = asyncio.create_task(stuck.work())
    started = asyncio.get_running_loop().time()
    assert not await stop_task(task, 0.05, grace=0.1)
    assert asyncio.get_running_loop().time() - started < 30  # a hang guard
    assert not task.done()
    stuck.release.set()
    await task


async def test_drain_logs_an_abandoned_task(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(slow())
    await drain(task, 0.05, what="the batch", log=log)
    assert task.cancelled()
    assert "the batch did not finish in 0.05 s; abandoned" in caplog.text


async def test_drain_raises_the_task_s_own_error() -> None:
    with pytest.raises(ValueError, match="the runner failed"):
        await drain(asyncio.create_task(failing()), 5, what="the batch", log=log)


async def test_drain_raises_shutdown_stuck_for_a_task_left_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bounded, "CANCEL_GRACE", 0.1)
    stuck = Swallowing()
    task = asyncio.create_task(stuck.work())
    with pytest.raises(ShutdownStuck, match="the consumer did not stop when cancelled"):
        await drain(task, 0.05, what="the consumer", log=log)
    assert "leaving it behind" in caplog.text
    stuck.release.set()
    await task


_STUCK_PROCESS = textwrap.dedent(
    """
    import asyncio, logging
    from outboxkit.outbox import bounded

    bounded.CANCEL_GRACE = 0.1
    logging.basicConfig(level=logging.INFO)

    async def swallowing():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def main():
        task = asyncio.create_task(swallowing())
        await bounded.drain(task, 0.1, what="the relay", log=logging.getLogger("relay"))

    bounded.run_or_exit(main())
    """
)


def test_a_process_stuck_in_its_shutdown_exits_70_instead_of_hanging() -> None:
    # asyncio.run alone would wait for the stuck task forever in its own clean-up.
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_PROCESS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == ShutdownStuck.exit_code == 70, done.stderr
    assert "the relay did not stop within 0.1 s of its cancellation" in done.stderr

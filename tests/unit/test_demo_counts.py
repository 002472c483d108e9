"""The demo's counts watcher ends, whatever the reader does with a cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from outboxkit import demo_counts
from outboxkit.demo_counts import Counts, CountsUnavailable, watcher


async def test_the_watcher_stops_a_reader_that_swallows_cancellation() -> None:
    """nats-py swallows a CancelledError in some awaits; the demo hung on one in CI."""
    reads = 0

    async def stubborn_read() -> Counts:
        nonlocal reads
        reads += 1
        with contextlib.suppress(asyncio.CancelledError):  # what nats-py's flusher does
            await asyncio.sleep(0.01)
        return Counts(written=reads)

    async with watcher(stubborn_read) as counts:
        while counts().written < 3:  # noqa: ASYNC110 - the refresh runs in the background
            await asyncio.sleep(0.01)
        seen = counts().written
    # the refresh stopped, then one final read gave the counts the verdict is made of
    final = reads
    await asyncio.sleep(0.5)
    assert reads == final
    assert final > seen


async def test_a_final_read_that_never_ends_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_counts, "READ_TIMEOUT", 0.3)
    first = True

    async def read() -> Counts:
        nonlocal first
        if first:
            first = False
            return Counts(written=1)
        await asyncio.Event().wait()  # a read stuck for good
        raise AssertionError("unreachable")

    with pytest.raises(CountsUnavailable):
        async with watcher(read) as counts:
            while counts().written != 1:  # noqa: ASYNC110 - the refresh runs in the background
                await asyncio.sleep(0.01)

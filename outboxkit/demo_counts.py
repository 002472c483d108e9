"""The demo's live counts: read from both databases and the broker, refreshed in the background.

The background refresh is stopped with a flag, never cancelled: nats-py swallows a
`CancelledError` that lands in some of its awaits (its flusher, `close()`), and a cancelled
refresh loop that swallowed its cancellation would then run forever while the demo waited
for it. Every wait here is bounded without relying on cancellation reaching its target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from outboxkit.devservers import NatsServer
from outboxkit.outbox.bounded import settle_within

log = logging.getLogger("outboxkit.demo")

STREAM = "OUTBOXKIT"
CONSUMER = "billing"
REFRESH_EVERY = 0.2
READ_TIMEOUT = 30.0


@dataclass
class Counts:
    """What the live view shows, read from the databases and the broker."""

    written: int = 0
    pending: int = 0
    in_broker: int = 0
    delivered: int = 0
    processed: int = 0
    invoices: int = 0
    distinct_invoices: int = 0

    @property
    def duplicates_absorbed(self) -> int:
        return max(self.delivered - self.processed, 0)


Reader = Callable[[], Awaitable[Counts]]


class CountsUnavailable(RuntimeError):
    """The final counts could not be read in time: the demo cannot give a verdict."""


@contextlib.asynccontextmanager
async def watcher(read: Reader) -> AsyncIterator[Callable[[], Counts]]:
    """Refresh the counts in the background; yields a function returning the latest.

    On the way out the refresh is asked to stop (and waited for, within a bound), then the
    counts are read once more: what the verdict is made of.
    """
    latest = Counts()
    stopping = asyncio.Event()

    async def refresh() -> None:
        nonlocal latest
        while not stopping.is_set():
            try:
                latest = await read()
            except Exception as exc:  # noqa: BLE001 - read again next time
                log.debug("reading the counts: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), REFRESH_EVERY)

    task = asyncio.create_task(refresh())
    try:
        yield lambda: latest
    finally:
        stopping.set()
        _, pending = await asyncio.wait({task}, timeout=READ_TIMEOUT)
        if pending:
            log.warning("the counts refresh did not stop within %gs; left behind", READ_TIMEOUT)
        final = asyncio.ensure_future(read())
        done, _ = await asyncio.wait({final}, timeout=READ_TIMEOUT)
        if not done:
            raise CountsUnavailable(f"the final counts were not read within {READ_TIMEOUT:g}s")
        latest = final.result()


@contextlib.asynccontextmanager
async def counts_reader(
    orders_dsn: str, billing_dsn: str, nats: NatsServer
) -> AsyncIterator[Reader]:
    """A `Reader` over both databases and one NATS connection kept for the whole demo."""
    import nats as nats_client

    client = await nats_client.connect(nats.url, name="outboxkit-demo-counts")
    js = client.jetstream(timeout=5)

    async def read() -> Counts:
        counts = Counts()
        async with await psycopg.AsyncConnection.connect(
            orders_dsn, autocommit=True, connect_timeout=10
        ) as conn:
            counts.written = await _scalar(conn, "SELECT count(*) FROM orders")
            counts.pending = await _scalar(conn, "SELECT count(*) FROM outboxkit.outbox_messages")
        async with await psycopg.AsyncConnection.connect(
            billing_dsn, autocommit=True, connect_timeout=10
        ) as conn:
            counts.processed = await _scalar(
                conn, "SELECT count(*) FROM outboxkit.inbox_messages WHERE consumer = 'billing'"
            )
            counts.invoices = await _scalar(conn, "SELECT count(*) FROM invoices")
            counts.distinct_invoices = await _scalar(
                conn, "SELECT count(DISTINCT order_id) FROM invoices"
            )
        with contextlib.suppress(Exception):  # the stream appears with the first event
            counts.in_broker = (await js.stream_info(STREAM)).state.messages
        with contextlib.suppress(Exception):  # the consumer appears when billing starts
            counts.delivered = (await js.consumer_info(STREAM, CONSUMER)).delivered.stream_seq
        return counts

    try:
        yield read
    finally:
        with contextlib.suppress(Exception):  # the counts are read; a failed close is moot
            await settle_within(client.close(), 10)


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    cursor = await conn.execute(query)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0

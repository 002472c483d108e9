"""A worker slot: the database connection(s) one concurrent worker of the runner uses.

Handlers are all sync or all async (`Inbox.is_async`). Async handlers run on an async
connection in the event loop; sync handlers run in a thread on a sync connection. Either
way the dedup row, the handler's writes and the commit share one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg

from outboxkit.brokers import Malformed
from outboxkit.inbox import batch_async, batch_sync
from outboxkit.inbox.failures import MALFORMED_PREFIX
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.inbox.stored import BatchResult, Outcome
from outboxkit.outbox.db import aconnect, connect, connection_lost
from outboxkit.outbox.limits import clean_text
from outboxkit.outbox.message import Message

Result = Outcome  # the name callers of `handle_many` know


class Slot:
    """One worker's connections; `reset()` after a connection error reconnects lazily."""

    def __init__(self, inbox: Inbox, settings: ConsumerSettings) -> None:
        self.inbox = inbox
        self.settings = settings
        self._async_handlers = inbox.is_async
        self._aconn: psycopg.AsyncConnection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None

    async def handle_many(self, messages: list[Message], *, cautious: bool = False) -> list[Result]:
        """Dedup and handle a batch in one committed transaction. Per message: True
        (handled), False (a duplicate) or the handler's exception (nothing of it remains).
        A lost connection aborts the whole batch: nothing is committed and it propagates.

        The batch first locks its messages in one global order (`lock_messages`), so that
        batches sharing duplicates wait for each other instead of deadlocking. It then runs
        optimistically (`inbox.batch_async`): one statement records the whole batch, handlers
        run without savepoints (pipelined if the inbox opted in); after any failure it runs
        again with a savepoint per message. A `cautious` batch (one holding a redelivery,
        which failed before) skips the optimistic pass."""
        if self._async_handlers:
            batch = batch_async.Deliveries(self.inbox, messages, cautious=cautious)
            return await batch_async.run(await self._async(), batch)
        twin = batch_sync.Deliveries(self.inbox, messages, cautious=cautious)
        return await asyncio.to_thread(batch_sync.run, await self._sync(), twin)

    async def process_stored(self) -> BatchResult:
        """Claim and handle one batch of stored messages (durable mode)."""
        if self._async_handlers:
            batch = batch_async.StoredRows(self.inbox, self.settings)
            return await batch_async.run(await self._async(), batch)
        twin = batch_sync.StoredRows(self.inbox, self.settings)
        return await asyncio.to_thread(batch_sync.run, await self._sync(), twin)

    async def store(self, messages: list[Message]) -> None:
        """Store messages for the durable workers (duplicates dropped), committed. Locked
        first like `handle_many`: two stores of shuffled duplicates would deadlock too."""
        aconn = await self._async()
        async with aconn.pipeline(), aconn.transaction():  # one round trip, COMMIT included
            await aconn.execute(
                self.inbox.queries["lock_messages"], self.inbox.lock_params(messages)
            )
            await aconn.execute(self.inbox.queries["store"], self.inbox.message_params(messages))

    async def bury_malformed(self, found: Sequence[Malformed]) -> None:
        """Dead-letter deliveries whose envelope is broken (each with an id), committed;
        without dedup rows (see `inbox.malformed`)."""
        aconn = await self._async()
        async with aconn.transaction():
            errors = [f"{MALFORMED_PREFIX}{m.reason}" for m in found]
            params = {**self.inbox.message_params(found), "errors": errors}
            await aconn.execute(self.inbox.queries["bury_malformed"], params)

    async def bury(self, message: Message, attempts: int, error: str) -> None:
        """Dead-letter a delivery the handler kept failing on, keeping its dedup key.

        `error` should come from `inbox.failures.error_text`; it is cleaned again here (a
        no-op on clean text) for callers that format their own."""
        aconn = await self._async()
        async with aconn.transaction():
            params = self.inbox.bury_params(delivered=[(message, attempts, clean_text(error))])
            await aconn.execute(self.inbox.queries["bury"], params)

    def connection_lost(self) -> bool:
        """Whether one of this slot's connections is unusable (rather than a statement
        having failed on it): decided from the connections' state, not from an exception."""
        return any(c is not None and connection_lost(c) for c in (self._aconn, self._conn))

    async def reset(self) -> None:
        """Close both connections (after a connection error); the next call reconnects."""
        if self._aconn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._aconn.close()
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await asyncio.to_thread(self._conn.close)
        self._aconn = self._conn = None

    async def _async(self) -> psycopg.AsyncConnection[Any]:
        aconn = self._aconn
        if aconn is None or aconn.closed:
            aconn = self._aconn = await aconnect(self.settings.dsn)
        return aconn

    async def _sync(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await asyncio.to_thread(connect, self.settings.dsn)
            self._conn = conn
        return conn

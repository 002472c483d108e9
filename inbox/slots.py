"""A worker slot: the database connection(s) one concurrent worker of the runner uses.

Handlers are all sync or all async (`Inbox.is_async`). Async handlers run on an async
connection in the event loop; sync handlers run in a thread on a sync connection. Either
way the dedup row, the handler's writes and the commit share one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from outboxkit.brokers import Malformed
from outboxkit.inbox.failures import MALFORMED_PREFIX
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.optimistic import (
    HandlerFailed,
    amessage_savepoint,
    handler_failures,
    message_savepoint,
    optimistic_atransaction,
    optimistic_transaction,
)
from outboxkit.inbox.registry import AsyncHandler, Registration
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.inbox.stored import BatchResult, process_batch_async, process_batch_sync
from outboxkit.outbox.db import aconnect, connect, connection_lost
from outboxkit.outbox.limits import clean_text
from outboxkit.outbox.message import Message

Result = bool | Exception


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
        optimistically (`inbox.optimistic`): one statement records the whole batch, handlers
        run without savepoints (pipelined if the inbox opted in); after any failure it runs
        again with a savepoint per message. A `cautious` batch (one holding a redelivery,
        which failed before) skips the optimistic pass."""
        optimistic = not cautious and all(self.inbox.handler_for(m.topic) for m in messages)
        if self._async_handlers:
            aconn = await self._async()
            if optimistic:
                with contextlib.suppress(HandlerFailed):
                    async with optimistic_atransaction(aconn, self.inbox.pipelined):
                        return await self._batch_async(aconn, messages)
            async with aconn.transaction():
                await aconn.execute(
                    self.inbox.queries["lock_messages"], self.inbox.lock_params(messages)
                )
                return [await self._one_async(aconn, message) for message in messages]
        conn = await self._sync()
        return await asyncio.to_thread(self._handle_many_sync, conn, messages, optimistic)

    async def _batch_async(
        self, aconn: psycopg.AsyncConnection[Any], messages: list[Message]
    ) -> list[Result]:
        await aconn.execute(self.inbox.queries["lock_messages"], self.inbox.lock_params(messages))
        cursor = await aconn.execute(
            self.inbox.queries["record_many"], self.inbox.record_many_params(messages)
        )
        fresh = {row[0] for row in await cursor.fetchall()}
        results: list[Result] = []
        with handler_failures(aconn):
            for message in messages:
                registration = self._first_time(message, fresh)
                if registration is not None:
                    await cast(AsyncHandler, registration.handler)(aconn, message)
                results.append(registration is not None)
        return results

    def _handle_many_sync(
        self, conn: psycopg.Connection[Any], messages: list[Message], optimistic: bool
    ) -> list[Result]:
        if optimistic:
            with (
                contextlib.suppress(HandlerFailed),
                optimistic_transaction(conn, self.inbox.pipelined),
            ):
                return self._batch_sync(conn, messages)
        with conn.transaction():
            conn.execute(self.inbox.queries["lock_messages"], self.inbox.lock_params(messages))
            return [self._one_sync(conn, message) for message in messages]

    def _batch_sync(self, conn: psycopg.Connection[Any], messages: list[Message]) -> list[Result]:
        conn.execute(self.inbox.queries["lock_messages"], self.inbox.lock_params(messages))
        cursor = conn.execute(
            self.inbox.queries["record_many"], self.inbox.record_many_params(messages)
        )
        fresh = {row[0] for row in cursor.fetchall()}
        results: list[Result] = []
        with handler_failures(conn):
            for message in messages:
                registration = self._first_time(message, fresh)
                if registration is not None:
                    registration.handler(conn, message)
                results.append(registration is not None)
        return results

    def _first_time(self, message: Message, fresh: set[UUID]) -> Registration | None:
        """The handler to run if this is the message's first delivery (once per batch)."""
        if message.message_id not in fresh:
            return None
        fresh.discard(message.message_id)
        return self.inbox.handler_for(message.topic)

    async def _one_async(self, aconn: psycopg.AsyncConnection[Any], message: Message) -> Result:
        try:
            async with amessage_savepoint(aconn, self.inbox.queries):
                return await self.inbox.ahandle(aconn, message)
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(aconn):
                raise
            return exc

    def _one_sync(self, conn: psycopg.Connection[Any], message: Message) -> Result:
        try:
            with message_savepoint(conn, self.inbox.queries):
                return self.inbox.handle(conn, message)
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(conn):
                raise
            return exc

    async def process_stored(self) -> BatchResult:
        """Claim and handle one batch of stored messages (durable mode)."""
        if self._async_handlers:
            return await process_batch_async(self.inbox, await self._async(), self.settings)
        conn = await self._sync()
        return await asyncio.to_thread(process_batch_sync, self.inbox, conn, self.settings)

    async def store(self, messages: list[Message]) -> None:
        """Store messages for the durable workers (duplicates dropped), committed. Locked
        first like `handle_many`: two stores of shuffled duplicates would deadlock too."""
        aconn = await self._async()
        async with aconn.pipeline(), aconn.transaction():  # one round trip, COMMIT included
            await aconn.execute(
                self.inbox.queries["lock_messages"], self.inbox.lock_params(messages)
            )
            await aconn.execute(self.inbox.queries["store"], self.inbox.store_params(messages))

    async def bury_malformed(self, found: Sequence[Malformed]) -> None:
        """Dead-letter deliveries whose envelope is broken (each with an id), committed;
        without dedup rows (see `inbox.malformed`)."""
        aconn = await self._async()
        async with aconn.transaction():
            await aconn.execute(
                self.inbox.queries["bury_malformed"],
                {
                    "consumer": self.inbox.consumer,
                    "message_ids": [m.message_id for m in found],
                    "topics": [m.topic for m in found],
                    "keys": [m.key for m in found],
                    "payloads": [m.payload for m in found],
                    "content_types": [m.content_type for m in found],
                    "headers": [Jsonb(dict(m.headers)) for m in found],
                    "errors": [f"{MALFORMED_PREFIX}{m.reason}" for m in found],
                },
            )

    async def bury(self, message: Message, attempts: int, error: str) -> None:
        """Dead-letter a delivery the handler kept failing on, keeping its dedup key.

        `error` should come from `inbox.failures.error_text`; it is cleaned again here (a
        no-op on clean text) for callers that format their own."""
        aconn = await self._async()
        async with aconn.transaction():
            await aconn.execute(
                self.inbox.queries["bury_delivery"],
                {
                    "consumer": self.inbox.consumer,
                    "message_id": message.message_id,
                    "topic": message.topic,
                    "key": message.key,
                    "payload": message.payload,
                    "content_type": message.content_type,
                    "headers": Jsonb(dict(message.headers)),
                    "attempts": attempts,
                    "error": clean_text(error),
                },
            )

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

"""A worker slot: the database connection(s) one concurrent worker of the runner uses.

Handlers are all sync or all async (`Inbox.is_async`). Async handlers run on an async
connection in the event loop; sync handlers run in a thread on a sync connection. Either
way the dedup row, the handler's writes and the commit share one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from inbox.inbox import Inbox
from inbox.settings import ConsumerSettings
from inbox.stored import BatchResult, process_batch_async, process_batch_sync
from outbox.db import aconnect, connect
from outbox.message import Message

# Errors that mean the connection (not the message) failed: the batch is abandoned.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
Result = bool | Exception


class Slot:
    """One worker's connections; `reset()` after a connection error reconnects lazily."""

    def __init__(self, inbox: Inbox, settings: ConsumerSettings) -> None:
        self.inbox = inbox
        self.settings = settings
        self._async_handlers = inbox.is_async
        self._aconn: psycopg.AsyncConnection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None

    async def handle_many(self, messages: list[Message]) -> list[Result]:
        """Dedup and handle each message under its own savepoint, all in one committed
        transaction. Per message: True (handled), False (a duplicate) or the handler's
        exception (its savepoint rolled back: nothing of it remains). A lost connection
        aborts the whole batch: nothing is committed and the exception propagates.

        The batch first locks its messages in one global order (`lock_messages`), so that
        batches sharing duplicates wait for each other instead of deadlocking."""
        if self._async_handlers:
            aconn = await self._async()
            async with aconn.transaction():
                await aconn.execute(
                    self.inbox.queries["lock_messages"], self.inbox.lock_params(messages)
                )
                return [await self._one_async(aconn, message) for message in messages]
        conn = await self._sync()
        return await asyncio.to_thread(self._handle_many_sync, conn, messages)

    async def _one_async(self, aconn: psycopg.AsyncConnection[Any], message: Message) -> Result:
        try:
            async with aconn.transaction():
                return await self.inbox.ahandle(aconn, message)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's failure, reported per message
            return exc

    def _handle_many_sync(
        self, conn: psycopg.Connection[Any], messages: list[Message]
    ) -> list[Result]:
        with conn.transaction():
            conn.execute(self.inbox.queries["lock_messages"], self.inbox.lock_params(messages))
            return [self._one_sync(conn, message) for message in messages]

    def _one_sync(self, conn: psycopg.Connection[Any], message: Message) -> Result:
        try:
            with conn.transaction():
                return self.inbox.handle(conn, message)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's failure, reported per message
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
        async with aconn.transaction():
            await aconn.execute(
                self.inbox.queries["lock_messages"], self.inbox.lock_params(messages)
            )
            await aconn.execute(self.inbox.queries["store"], self.inbox.store_params(messages))

    async def bury(self, message: Message, attempts: int, error: str) -> None:
        """Dead-letter a delivery the handler kept failing on, keeping its dedup key."""
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
                    "error": error[:2000],
                },
            )

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

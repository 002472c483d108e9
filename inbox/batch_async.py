"""The inbox's batch algorithm, once for broker deliveries and for stored rows.

Written once, async: `batch_async.py` is the source and `batch_sync.py` is generated from
it by `scripts/async_to_sync.py` (run it after an edit; a unit test fails while it is stale).

`run` takes a batch in one transaction: the deliveries of one fetch (idempotent mode,
`Deliveries`) or the stored messages of one claim (durable mode, `StoredRows`). First the
optimistic pass (`inbox.optimistic`): the batch is locked and recorded, or claimed, at once
and its handlers run without savepoints, pipelined if the inbox opted in. After any failure
it runs again carefully, with a savepoint per message. What differs between the two kinds
is a `Batch`: where its messages come from, how they are recorded, how the results settle.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import psycopg
from psycopg import AsyncConnection, sql

from outboxkit.inbox.optimistic import (
    HandlerFailed,
    check_committable,
    first_deliveries,
    handler_failures,
)
from outboxkit.inbox.registry import AsyncHandler, Registration
from outboxkit.inbox.stored import (
    BatchResult,
    Outcome,
    StoredMessage,
    claim_params,
    first_tries,
    settle_params,
    to_stored,
)
from outboxkit.outbox.db import connection_lost
from outboxkit.outbox.message import Message

if TYPE_CHECKING:
    from outboxkit.inbox.inbox import Inbox
    from outboxkit.inbox.settings import ConsumerSettings

Item = TypeVar("Item")
Settled = TypeVar("Settled", covariant=True)


class Batch(Protocol[Item, Settled]):
    """One kind of batch: what `run` needs to know of it."""

    inbox: Inbox  # whose handlers run
    optimistic: bool  # whether to try the optimistic pass first

    def message(self, item: Item) -> Message:
        """The message of one item of the batch."""

    async def take(self, conn: AsyncConnection[Any]) -> list[Item]:
        """The batch, locked or claimed: the first statement of its transaction."""

    async def record_all(self, conn: AsyncConnection[Any], items: list[Item]) -> list[bool]:
        """Optimistic pass: record the batch at once; per item, whether its handler runs.
        Raises `HandlerFailed` to go to the careful pass straight away."""

    async def record(self, conn: AsyncConnection[Any], item: Item) -> bool:
        """Careful pass, under the item's savepoint: record it; False for a duplicate."""

    async def settle(
        self, conn: AsyncConnection[Any], items: list[Item], outcomes: list[Outcome]
    ) -> Settled:
        """The last statements of the transaction, once every item has its outcome."""


async def run(conn: AsyncConnection[Any], batch: Batch[Item, Settled]) -> Settled:
    """Handle `batch` in one committed transaction on `conn`, optimistically first.

    A lost connection aborts the whole batch: nothing is committed and it propagates."""
    if batch.optimistic:
        with contextlib.suppress(HandlerFailed):
            return await optimistic_pass(conn, batch)
    return await careful_pass(conn, batch)


async def optimistic_pass(conn: AsyncConnection[Any], batch: Batch[Item, Settled]) -> Settled:
    """The batch without savepoints; after any failure it is rolled back: `HandlerFailed`."""
    async with optimistic_transaction(conn, batch.inbox.pipelined):
        items = await batch.take(conn)
        runs = await batch.record_all(conn, items)
        with handler_failures(conn):
            for item, runs_handler in zip(items, runs, strict=True):
                if runs_handler:
                    message = batch.message(item)
                    await call(batch.inbox.registration(message), conn, message)
        return await batch.settle(conn, items, [*runs])


async def careful_pass(conn: AsyncConnection[Any], batch: Batch[Item, Settled]) -> Settled:
    """The batch with a savepoint per item: a failure is that item's outcome."""
    async with conn.transaction():
        items = await batch.take(conn)
        outcomes = [await carefully(conn, batch, item) for item in items]
        return await batch.settle(conn, items, outcomes)


async def carefully(conn: AsyncConnection[Any], batch: Batch[Item, Any], item: Item) -> Outcome:
    """One item of the careful pass, under its own savepoint: its outcome."""
    message = batch.message(item)
    try:
        async with message_savepoint(conn, batch.inbox.queries):
            registration = batch.inbox.registration(message)  # NoHandler before recording
            if not await batch.record(conn, item):
                return False
            await call(registration, conn, message)
            return True
    except Exception as exc:
        if isinstance(exc, psycopg.Error) and connection_lost(conn):
            raise
        return exc


class Deliveries:
    """A fetched batch of broker deliveries (idempotent mode): dedup rows and handlers;
    the runner acks, redelivers or dead-letters each after the commit (`settle` returns
    the outcomes)."""

    def __init__(self, inbox: Inbox, messages: list[Message], *, cautious: bool) -> None:
        self.inbox = inbox
        self.messages = messages
        # A cautious batch holds a redelivery (which failed before): it would likely fail
        # the optimistic pass again, as would a message no handler takes.
        self.optimistic = not cautious and all(inbox.handler_for(m.topic) for m in messages)

    def message(self, item: Message) -> Message:
        return item

    async def take(self, conn: AsyncConnection[Any]) -> list[Message]:
        # Locks in one global order: batches sharing duplicates queue instead of deadlocking.
        locks = self.inbox.lock_params(self.messages)
        await conn.execute(self.inbox.queries["lock_messages"], locks)
        return self.messages

    async def record_all(self, conn: AsyncConnection[Any], items: list[Message]) -> list[bool]:
        params = self.inbox.record_many_params(items)
        cursor = await conn.execute(self.inbox.queries["record_many"], params)
        return first_deliveries(items, {row[0] for row in await cursor.fetchall()})

    async def record(self, conn: AsyncConnection[Any], item: Message) -> bool:
        return await record_one(self.inbox, conn, item)

    async def settle(
        self, conn: AsyncConnection[Any], items: list[Message], outcomes: list[Outcome]
    ) -> list[Outcome]:
        return outcomes


class StoredRows:
    """A claimed batch of stored messages (durable mode): the heads of their keys, settled
    (processed, retried later or dead-lettered) in the same transaction."""

    def __init__(self, inbox: Inbox, settings: ConsumerSettings) -> None:
        self.inbox = inbox
        self.settings = settings
        self.optimistic = True  # `record_all` turns it down for a batch with a retry

    def message(self, item: StoredMessage) -> Message:
        return item.message

    async def take(self, conn: AsyncConnection[Any]) -> list[StoredMessage]:
        params = claim_params(self.inbox, self.settings)
        cursor = await conn.execute(self.inbox.queries["claim"], params)
        return [to_stored(row) for row in await cursor.fetchall()]

    async def record_all(
        self, conn: AsyncConnection[Any], items: list[StoredMessage]
    ) -> list[bool]:
        return first_tries(items)  # stored rows are their own record

    async def record(self, conn: AsyncConnection[Any], item: StoredMessage) -> bool:
        return True

    async def settle(
        self, conn: AsyncConnection[Any], items: list[StoredMessage], outcomes: list[Outcome]
    ) -> BatchResult:
        result = BatchResult.of(items, outcomes, self.settings)
        for name, params in settle_params(self.inbox, result, self.settings.keep_payload):
            await conn.execute(self.inbox.queries[name], params)
        return result


async def handle_one(
    inbox: Inbox, tx: Any, conn: AsyncConnection[Any], registration: Registration, message: Message
) -> bool:
    """`Inbox.handle`: record `message` in `conn`'s transaction and run its handler on `tx`,
    unless it was recorded before (False)."""
    if not await record_one(inbox, conn, message):
        return False
    await call(registration, tx, message)
    return True


async def record_one(inbox: Inbox, conn: AsyncConnection[Any], message: Message) -> bool:
    """Write `message`'s dedup row; False if it has one already. Waits for the commit of a
    concurrent transaction recording the same message."""
    cursor = await conn.execute(inbox.queries["record"], inbox.record_params(message))
    return await cursor.fetchone() is not None


async def call(registration: Registration, tx: Any, message: Message) -> None:
    """Run `registration`'s handler for `message` on `tx`."""
    await cast(AsyncHandler, registration.handler)(tx, message)


@contextlib.asynccontextmanager
async def optimistic_transaction(
    conn: AsyncConnection[Any], pipelined: bool
) -> AsyncIterator[None]:
    """An optimistic transaction (pipelined if asked); failures become `HandlerFailed`."""
    with handler_failures(conn):
        pipeline = conn.pipeline() if pipelined else contextlib.nullcontext(None)
        async with pipeline as sync_point, conn.transaction():
            yield
            if sync_point is not None:
                await sync_point.sync()
            check_committable(conn)


@contextlib.asynccontextmanager
async def message_savepoint(
    conn: AsyncConnection[Any], queries: Mapping[str, sql.Composed]
) -> AsyncIterator[None]:
    """The careful pass: one message's work under a savepoint that is rolled back to on any
    failure, a failed RELEASE included (a handler that swallowed its own SQL error)."""
    await conn.execute(queries["savepoint"])
    try:
        yield
        await conn.execute(queries["release_savepoint"])
    except BaseException as exc:
        if not (isinstance(exc, psycopg.Error) and connection_lost(conn)):
            await conn.execute(queries["rollback_to_savepoint"])
            await conn.execute(queries["release_savepoint"])
        raise

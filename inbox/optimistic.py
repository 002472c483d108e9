"""Optimistic batches: a batch's handlers run in one transaction without savepoints.

(And the careful pass's per-message savepoint, `message_savepoint`.)

A batch of deliveries (idempotent mode) or of stored messages (durable mode) is first run
with no savepoint per message, saving two round trips a message. Any failure in that pass
rolls the whole transaction back and raises `HandlerFailed`; the caller then runs the batch
the careful way, a savepoint per message, which keeps the others' effects and reports each
failure on its own message. Handlers of such a batch run twice, as after any redelivery.

With `Inbox(pipelined=True)` the optimistic pass also runs in psycopg pipeline mode, so a
handler's statements share round trips; a statement's error then surfaces at the next sync.

Before COMMIT the transaction's state is checked: a handler that caught its own SQL error
leaves it aborted, and PostgreSQL would turn the COMMIT into a silent ROLLBACK of the whole
batch. Only a lost connection (closed or broken) passes through as a psycopg error: a
deadlock, a statement timeout or a serialization failure is the batch's failure, retried and
eventually dead-lettered per message like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from outboxkit.outbox.db import connection_lost

Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
Queries = Mapping[str, sql.Composed]


class HandlerFailed(Exception):
    """Something failed in an optimistic batch: it was rolled back; run it with savepoints."""


@contextlib.contextmanager
def handler_failures(conn: Conn) -> Iterator[None]:
    """Turn a handler's exception into `HandlerFailed`, unless the connection is lost."""
    try:
        yield
    except HandlerFailed:
        raise
    except psycopg.Error as exc:
        if connection_lost(conn):
            raise
        raise HandlerFailed from exc
    except Exception as exc:
        raise HandlerFailed from exc


def _aborted() -> HandlerFailed:
    return HandlerFailed("the transaction is aborted: a handler caught its own SQL error")


@contextlib.contextmanager
def optimistic_transaction(conn: psycopg.Connection[Any], pipelined: bool) -> Iterator[None]:
    """An optimistic transaction (pipelined if asked); failures become `HandlerFailed`."""
    with handler_failures(conn):
        pipeline = conn.pipeline() if pipelined else contextlib.nullcontext(None)
        with pipeline as sync_point, conn.transaction():
            yield
            if sync_point is not None:
                sync_point.sync()
            if conn.info.transaction_status == TransactionStatus.INERROR:
                raise _aborted()


@contextlib.asynccontextmanager
async def optimistic_atransaction(
    conn: psycopg.AsyncConnection[Any], pipelined: bool
) -> AsyncIterator[None]:
    """Async `optimistic_transaction`."""
    with handler_failures(conn):
        pipeline = conn.pipeline() if pipelined else contextlib.nullcontext(None)
        async with pipeline as sync_point, conn.transaction():
            yield
            if sync_point is not None:
                await sync_point.sync()
            if conn.info.transaction_status == TransactionStatus.INERROR:
                raise _aborted()


@contextlib.contextmanager
def message_savepoint(conn: psycopg.Connection[Any], queries: Queries) -> Iterator[None]:
    """The careful pass: one message's work under a savepoint that is rolled back to on any
    failure, a failed RELEASE included (a handler that swallowed its own SQL error)."""
    conn.execute(queries["savepoint"])
    try:
        yield
        conn.execute(queries["release_savepoint"])
    except BaseException as exc:
        if not (isinstance(exc, psycopg.Error) and connection_lost(conn)):
            conn.execute(queries["rollback_to_savepoint"])
            conn.execute(queries["release_savepoint"])
        raise


@contextlib.asynccontextmanager
async def amessage_savepoint(
    conn: psycopg.AsyncConnection[Any], queries: Queries
) -> AsyncIterator[None]:
    """Async `message_savepoint`."""
    await conn.execute(queries["savepoint"])
    try:
        yield
        await conn.execute(queries["release_savepoint"])
    except BaseException as exc:
        if not (isinstance(exc, psycopg.Error) and connection_lost(conn)):
            await conn.execute(queries["rollback_to_savepoint"])
            await conn.execute(queries["release_savepoint"])
        raise

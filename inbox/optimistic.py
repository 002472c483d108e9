"""Optimistic batches: handlers run in one pipelined transaction without savepoints.

A batch of deliveries (idempotent mode) or of stored messages (durable mode) is first run in
psycopg pipeline mode with no savepoint per message: statements that need no result are
sent together, so a handler's INSERT costs no round trip of its own. Any failure in that pass
(a handler raising, or a statement of it failing, reported when the pipeline syncs) rolls
the whole transaction back and raises `HandlerFailed`; the caller then runs the batch the
careful way, a savepoint per message, which keeps the others' effects and reports each
failure on its own message. Handlers of such a batch run twice, as after any redelivery.
Connection errors are never swallowed: they abort the batch as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg

# Errors that mean the connection (not the message) failed: the batch is abandoned.
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class HandlerFailed(Exception):
    """Something failed in an optimistic batch: it was rolled back; run it with savepoints."""


@contextlib.contextmanager
def handler_failures() -> Iterator[None]:
    """Turn a handler's exception into `HandlerFailed` (connection errors pass through)."""
    try:
        yield
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:
        raise HandlerFailed from exc


@contextlib.contextmanager
def optimistic_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A pipelined transaction; any non-connection failure becomes `HandlerFailed`."""
    try:
        with conn.pipeline(), conn.transaction():
            yield
    except CONNECTION_ERRORS:
        raise
    except psycopg.Error as exc:
        raise HandlerFailed from exc


@contextlib.asynccontextmanager
async def optimistic_atransaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """Async `optimistic_transaction`."""
    try:
        async with conn.pipeline(), conn.transaction():
            yield
    except CONNECTION_ERRORS:
        raise
    except psycopg.Error as exc:
        raise HandlerFailed from exc

"""Optimistic batches: what the two passes of `inbox.batch_async` share, sync or async.

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
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus

from outboxkit.outbox.db import connection_lost
from outboxkit.outbox.message import Message

Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]


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


def check_committable(conn: Conn) -> None:
    """Raise `HandlerFailed` if a handler left the transaction aborted (a COMMIT would be a
    silent ROLLBACK)."""
    if conn.info.transaction_status == TransactionStatus.INERROR:
        raise HandlerFailed("the transaction is aborted: a handler caught its own SQL error")


def first_deliveries(messages: list[Message], recorded: set[UUID]) -> list[bool]:
    """Per message, whether its handler runs: its dedup row was just `recorded`, and it is
    the first of its id in the batch (a message delivered twice in one batch runs once)."""
    fresh = set(recorded)
    runs = []
    for message in messages:
        runs.append(message.message_id in fresh)
        fresh.discard(message.message_id)
    return runs

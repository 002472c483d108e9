"""Durable mode: process stored messages in batches, per key in order, with retries.

One transaction per batch: claim the heads of their keys (SKIP LOCKED, so workers share),
run the handlers, then mark the batch processed, failed (backoff) or dead in the same
transaction. The handlers first run optimistically (`inbox.optimistic`: pipelined, no
savepoints); after any failure, or when a claimed message failed before, the batch runs
with a savepoint per handler. The sync and async twins below differ only in `await`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from outboxkit.inbox.failures import error_text
from outboxkit.inbox.inbox import Inbox, NoHandler
from outboxkit.inbox.optimistic import (
    HandlerFailed,
    amessage_savepoint,
    handler_failures,
    message_savepoint,
    optimistic_atransaction,
    optimistic_transaction,
)
from outboxkit.inbox.registry import AsyncHandler, SyncHandler
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox.backoff import message_backoff
from outboxkit.outbox.db import connection_lost
from outboxkit.outbox.envelope import RESERVED
from outboxkit.outbox.message import Message


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    attempts: int
    message: Message


@dataclass
class BatchResult:
    """What happened to a claimed batch, as parameters for the settle queries."""

    done: list[int] = field(default_factory=list)
    retry: list[tuple[int, str, float]] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)

    def failed(self, stored: StoredMessage, exc: BaseException, settings: ConsumerSettings) -> None:
        error = error_text(exc)
        attempt = stored.attempts + 1
        if isinstance(exc, NoHandler) or attempt >= settings.max_attempts:
            self.dead.append((stored.seq, error))
        else:
            delay = message_backoff(attempt, settings.backoff_base, settings.backoff_max)
            self.retry.append((stored.seq, error, delay))

    @property
    def count(self) -> int:
        return len(self.done) + len(self.retry) + len(self.dead)


def to_stored(row: Sequence[Any]) -> StoredMessage:
    """A claim row as a `StoredMessage`."""
    seq, message_id, topic, key, payload, content_type, headers, received_at, attempts = row
    message = Message(
        message_id=message_id,
        topic=topic,
        payload=payload or b"",
        key=key,
        headers={k: v for k, v in (headers or {}).items() if k not in RESERVED},
        content_type=content_type or "application/json",
        created_at=received_at,
    )
    return StoredMessage(seq, attempts, message)


def _settle_params(
    inbox: Inbox, result: BatchResult, keep_payload: bool
) -> list[tuple[str, dict[str, Any]]]:
    consumer = inbox.consumer
    statements: list[tuple[str, dict[str, Any]]] = []
    if result.done:
        statements.append(
            (
                "mark_processed",
                {"consumer": consumer, "seqs": result.done, "keep_payload": keep_payload},
            )
        )
    if result.retry:
        seqs, errors, delays = zip(*result.retry, strict=True)
        statements.append(
            (
                "mark_failed",
                {
                    "consumer": consumer,
                    "seqs": list(seqs),
                    "errors": list(errors),
                    "delays": list(delays),
                },
            )
        )
    if result.dead:
        seqs, errors = zip(*result.dead, strict=True)
        statements.append(
            ("bury_stored", {"consumer": consumer, "seqs": list(seqs), "errors": list(errors)})
        )
    return statements


def _claim_params(inbox: Inbox, limit: int) -> dict[str, Any]:
    return {"consumer": inbox.consumer, "limit": limit}


def process_batch_sync(
    inbox: Inbox, conn: psycopg.Connection[Any], settings: ConsumerSettings
) -> BatchResult:
    """Claim and handle one batch with sync handlers on a sync connection."""
    with contextlib.suppress(HandlerFailed), optimistic_transaction(conn, inbox.pipelined):
        rows = conn.execute(inbox.queries["claim"], _claim_params(inbox, settings.batch_size))
        result = BatchResult()
        with handler_failures(conn):
            for stored in _first_tries(rows.fetchall()):
                cast(SyncHandler, _handler(inbox, stored.message))(conn, stored.message)
                result.done.append(stored.seq)
        _settle_sync(inbox, conn, result, settings)
        return result
    result = BatchResult()
    with conn.transaction():
        rows = conn.execute(inbox.queries["claim"], _claim_params(inbox, settings.batch_size))
        for stored in [to_stored(row) for row in rows.fetchall()]:
            try:
                with message_savepoint(conn, inbox.queries):
                    handler = cast(SyncHandler, _handler(inbox, stored.message))
                    handler(conn, stored.message)
                result.done.append(stored.seq)
            except Exception as exc:
                if isinstance(exc, psycopg.Error) and connection_lost(conn):
                    raise
                result.failed(stored, exc, settings)
        _settle_sync(inbox, conn, result, settings)
    return result


async def process_batch_async(
    inbox: Inbox, conn: psycopg.AsyncConnection[Any], settings: ConsumerSettings
) -> BatchResult:
    """Claim and handle one batch with async handlers on an async connection."""
    claim = inbox.queries["claim"], _claim_params(inbox, settings.batch_size)
    with contextlib.suppress(HandlerFailed):
        async with optimistic_atransaction(conn, inbox.pipelined):
            rows = await (await conn.execute(*claim)).fetchall()
            result = BatchResult()
            with handler_failures(conn):
                for stored in _first_tries(rows):
                    handler = cast(AsyncHandler, _handler(inbox, stored.message))
                    await handler(conn, stored.message)
                    result.done.append(stored.seq)
            await _settle_async(inbox, conn, result, settings)
            return result
    result = BatchResult()
    async with conn.transaction():
        rows = await (await conn.execute(*claim)).fetchall()
        for stored in [to_stored(row) for row in rows]:
            try:
                async with amessage_savepoint(conn, inbox.queries):
                    handler = cast(AsyncHandler, _handler(inbox, stored.message))
                    await handler(conn, stored.message)
                result.done.append(stored.seq)
            except Exception as exc:
                if isinstance(exc, psycopg.Error) and connection_lost(conn):
                    raise
                result.failed(stored, exc, settings)
        await _settle_async(inbox, conn, result, settings)
    return result


def _first_tries(rows: Sequence[Sequence[Any]]) -> list[StoredMessage]:
    """The claimed batch for the optimistic pass; a message that failed before (it has
    attempts) sends the batch to the careful pass at once, instead of failing it twice."""
    batch = [to_stored(row) for row in rows]
    if any(stored.attempts for stored in batch):
        raise HandlerFailed
    return batch


def _settle_sync(
    inbox: Inbox, conn: psycopg.Connection[Any], result: BatchResult, settings: ConsumerSettings
) -> None:
    for name, params in _settle_params(inbox, result, settings.keep_payload):
        conn.execute(inbox.queries[name], params)


async def _settle_async(
    inbox: Inbox,
    conn: psycopg.AsyncConnection[Any],
    result: BatchResult,
    settings: ConsumerSettings,
) -> None:
    for name, params in _settle_params(inbox, result, settings.keep_payload):
        await conn.execute(inbox.queries[name], params)


def _handler(inbox: Inbox, message: Message) -> Any:
    registration = inbox.registry.find(message.topic)
    if registration is None:
        raise NoHandler(f"consumer {inbox.consumer!r} has no handler for topic {message.topic!r}")
    return registration.handler

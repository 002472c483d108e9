"""Durable mode: process stored messages in batches, per key in order, with retries.

One transaction per batch: claim the heads of their keys (SKIP LOCKED, so workers share),
run each handler under a savepoint, then mark the batch processed, failed (backoff) or dead
in the same transaction. The sync and async twins below differ only in `await`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from inbox.inbox import Inbox, NoHandler
from inbox.registry import AsyncHandler, SyncHandler
from inbox.settings import ConsumerSettings
from outbox.backoff import message_backoff
from outbox.envelope import RESERVED
from outbox.message import Message


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
        error = f"{type(exc).__name__}: {exc}"[:2000]
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
    result = BatchResult()
    with conn.transaction():
        rows = conn.execute(inbox.queries["claim"], _claim_params(inbox, settings.batch_size))
        for stored in [to_stored(row) for row in rows.fetchall()]:
            try:
                with conn.transaction():
                    handler = cast(SyncHandler, _handler(inbox, stored.message))
                    handler(conn, stored.message)
                result.done.append(stored.seq)
            except Exception as exc:  # noqa: BLE001 - a handler's failure is data here
                result.failed(stored, exc, settings)
        for name, params in _settle_params(inbox, result, settings.keep_payload):
            conn.execute(inbox.queries[name], params)
    return result


async def process_batch_async(
    inbox: Inbox, conn: psycopg.AsyncConnection[Any], settings: ConsumerSettings
) -> BatchResult:
    """Claim and handle one batch with async handlers on an async connection."""
    result = BatchResult()
    async with conn.transaction():
        rows = await conn.execute(inbox.queries["claim"], _claim_params(inbox, settings.batch_size))
        for stored in [to_stored(row) for row in await rows.fetchall()]:
            try:
                async with conn.transaction():
                    handler = cast(AsyncHandler, _handler(inbox, stored.message))
                    await handler(conn, stored.message)
                result.done.append(stored.seq)
            except Exception as exc:  # noqa: BLE001 - a handler's failure is data here
                result.failed(stored, exc, settings)
        for name, params in _settle_params(inbox, result, settings.keep_payload):
            await conn.execute(inbox.queries[name], params)
    return result


def _handler(inbox: Inbox, message: Message) -> Any:
    registration = inbox.registry.find(message.topic)
    if registration is None:
        raise NoHandler(f"consumer {inbox.consumer!r} has no handler for topic {message.topic!r}")
    return registration.handler

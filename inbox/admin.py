"""Operator verbs for the inbox: dead letters (list, retry, purge)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from outboxkit.inbox.failures import is_malformed
from outboxkit.inbox.queries import bound
from outboxkit.outbox.db import connect, like_pattern, schema_errors
from outboxkit.outbox.errors import ConfigurationError

log = logging.getLogger("outboxkit.inbox")


@dataclass(frozen=True)
class InboxDeadLetter:
    consumer: str
    message_id: UUID
    topic: str
    key: str | None
    attempts: int
    last_error: str
    dead_at: datetime


def find_dead_letters(
    dsn: str,
    schema: str = "outboxkit",
    *,
    consumer: str | None = None,
    message_ids: Sequence[UUID] | None = None,
    topic: str | None = None,
    key: str | None = None,
    limit: int = 1000,
) -> list[InboxDeadLetter]:
    """Inbox dead letters matching every given filter (`topic` may use `*` wildcards)."""
    with connect(dsn) as conn, schema_errors(schema):
        return _find(conn, schema, consumer, message_ids, topic, key, limit)


def retry_dead_letters(
    dsn: str, schema: str = "outboxkit", *, dry_run: bool = False, **filters: Any
) -> list[InboxDeadLetter]:
    """Hand matching dead letters back to the consumer's durable workers."""
    return _act("retry_dead_letters", dsn, schema, dry_run, filters)


def purge_dead_letters(
    dsn: str, schema: str = "outboxkit", *, dry_run: bool = False, **filters: Any
) -> list[InboxDeadLetter]:
    """Delete matching inbox dead letters for good (their dedup keys stay)."""
    return _act("purge_dead_letters", dsn, schema, dry_run, filters)


def _act(
    query: str, dsn: str, schema: str, dry_run: bool, filters: dict[str, Any]
) -> list[InboxDeadLetter]:
    wanted = ("consumer", "message_ids", "topic", "key", "all")
    if not any(filters.get(name) for name in wanted):
        raise ConfigurationError("name what to act on: --consumer, --id, --topic, --key or --all")
    with connect(dsn) as conn, schema_errors(schema), conn.transaction():
        found = _find(
            conn,
            schema,
            filters.get("consumer"),
            filters.get("message_ids"),
            filters.get("topic"),
            filters.get("key"),
            int(filters.get("limit") or 100_000),
        )
        if query == "retry_dead_letters":
            found = _without_malformed(found)
        if found and not dry_run:
            conn.execute(
                bound(schema)[query],
                {
                    "consumers": [d.consumer for d in found],
                    "message_ids": [d.message_id for d in found],
                },
            )
    return found


def _without_malformed(found: list[InboxDeadLetter]) -> list[InboxDeadLetter]:
    # A broken envelope's dead letter holds cleaned fields, not what was sent, and wrote no
    # dedup row: a well-formed copy may have been handled since. Retrying it could run a
    # handler on altered data, or twice. List or purge it; have the sender send it again.
    kept = [d for d in found if not is_malformed(d.attempts, d.last_error)]
    for d in found:
        if not is_malformed(d.attempts, d.last_error):
            continue
        log.warning(
            "not retrying %s of consumer %s: its envelope was malformed (%s); purge it and "
            "have the sender publish it again",
            d.message_id,
            d.consumer,
            d.last_error,
        )
    return kept


def _find(
    conn: psycopg.Connection[Any],
    schema: str,
    consumer: str | None,
    message_ids: Sequence[UUID] | None,
    topic: str | None,
    key: str | None,
    limit: int,
) -> list[InboxDeadLetter]:
    like = like_pattern(topic) if topic else None
    rows = conn.execute(
        bound(schema)["find_dead_letters"],
        {
            "consumer": consumer,
            "message_ids": list(message_ids) if message_ids else None,
            "topic": like,
            "key": key,
            "limit": limit,
        },
    ).fetchall()
    return [InboxDeadLetter(*row) for row in rows]

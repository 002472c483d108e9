"""Operator verbs: status, dead letters (list, retry, purge), repartitioning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from outboxkit.outbox.db import connect, like_pattern, schema_errors
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.relay.queries import bound


@dataclass(frozen=True)
class TopicBacklog:
    topic: str
    pending: int
    oldest_age_seconds: float
    retrying: int


@dataclass(frozen=True)
class RelayInfo:
    relay_id: str
    hostname: str
    pid: int
    heartbeat_age_seconds: float
    partitions: list[int]


@dataclass(frozen=True)
class Status:
    """What `outboxkit status` shows."""

    partitions: int
    backlog: list[TopicBacklog]
    dead_letters: dict[str, int]
    relays: list[RelayInfo]
    blocked_keys: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return sum(t.pending for t in self.backlog)

    @property
    def oldest_age_seconds(self) -> float:
        return max((t.oldest_age_seconds for t in self.backlog), default=0.0)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    message_id: UUID
    topic: str
    key: str | None
    attempts: int
    last_error: str
    dead_at: datetime
    created_at: datetime


def status(dsn: str, schema: str = "outboxkit") -> Status:
    """Backlog by topic, dead letters, live relays and their partitions."""
    queries = bound(schema)
    with connect(dsn) as conn, schema_errors(schema):
        (partitions,) = _one(conn.execute(queries["settings"]).fetchone())
        backlog = [TopicBacklog(*row) for row in conn.execute(queries["backlog_by_topic"])]
        dead = dict(conn.execute(queries["dead_letters_by_topic"]).fetchall())
        relays = [
            RelayInfo(rid, host, pid, age, list(parts))
            for rid, host, pid, age, parts in conn.execute(queries["relays"])
        ]
        blocked = dict(conn.execute(queries["blocked_keys"]).fetchall())
    return Status(int(partitions), backlog, dead, relays, blocked)


def find_dead_letters(
    dsn: str,
    schema: str = "outboxkit",
    *,
    message_ids: Sequence[UUID] | None = None,
    topic: str | None = None,
    key: str | None = None,
    limit: int = 1000,
) -> list[DeadLetter]:
    """Dead letters matching every given filter (`topic` may use `*` wildcards)."""
    with connect(dsn) as conn, schema_errors(schema):
        return _find(conn, schema, message_ids, topic, key, limit)


def retry_dead_letters(
    dsn: str, schema: str = "outboxkit", *, dry_run: bool = False, **filters: Any
) -> list[DeadLetter]:
    """Put matching dead letters back in the outbox (they keep their place in key order)."""
    return _act("retry_dead_letters", dsn, schema, dry_run, filters)


def purge_dead_letters(
    dsn: str, schema: str = "outboxkit", *, dry_run: bool = False, **filters: Any
) -> list[DeadLetter]:
    """Delete matching dead letters for good; their keys resume with the next message."""
    return _act("purge_dead_letters", dsn, schema, dry_run, filters)


def set_partitions(dsn: str, schema: str, partitions: int) -> bool:
    """Change the number of partitions; True if it changed.

    Takes an exclusive lock on the settings row, which waits for writers and relays in
    flight, so no key is ever split across two partitions.
    """
    if not 1 <= partitions <= 1024:
        raise ConfigurationError("partitions must be between 1 and 1024")
    queries = bound(schema)
    with connect(dsn) as conn, schema_errors(schema), conn.transaction():
        (current,) = _one(conn.execute(queries["settings"]).fetchone())
        if current == partitions:
            return False
        conn.execute(queries["lock_settings"])
        conn.execute(queries["repartition"], {"partitions": partitions})
    return True


def _act(
    query: str, dsn: str, schema: str, dry_run: bool, filters: dict[str, Any]
) -> list[DeadLetter]:
    if not any(filters.get(name) for name in ("message_ids", "topic", "key", "all")):
        raise ConfigurationError("name what to act on: --id, --topic, --key or --all")
    with connect(dsn) as conn, schema_errors(schema), conn.transaction():
        found = _find(
            conn,
            schema,
            filters.get("message_ids"),
            filters.get("topic"),
            filters.get("key"),
            int(filters.get("limit") or 100_000),
        )
        if found and not dry_run:
            conn.execute(bound(schema)[query], {"ids": [d.id for d in found]})
    return found


def _find(
    conn: psycopg.Connection[Any],
    schema: str,
    message_ids: Sequence[UUID] | None,
    topic: str | None,
    key: str | None,
    limit: int,
) -> list[DeadLetter]:
    like = like_pattern(topic) if topic else None
    rows = conn.execute(
        bound(schema)["find_dead_letters"],
        {
            "message_ids": list(message_ids) if message_ids else None,
            "topic": like,
            "key": key,
            "limit": limit,
        },
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def _one(row: Any) -> Any:
    assert row is not None
    return row

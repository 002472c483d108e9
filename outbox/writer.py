"""`Outbox`: write messages in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from psycopg import errors, sql
from psycopg.types.json import Jsonb

from outboxkit.outbox.building import build_message
from outboxkit.outbox.connections import async_connection, check_transactional, sync_connection
from outboxkit.outbox.errors import InvalidMessage, InvalidTopic, SchemaNotMigrated
from outboxkit.outbox.message import Message
from outboxkit.outbox.queries import bound
from outboxkit.outbox.settings import OutboxSettings


class Outbox:
    """Writes messages into the outbox table inside the caller's transaction.

    `Outbox()` uses the default settings; pass `schema=…` and other `OutboxSettings` fields
    for yours. It never commits, rolls back or closes the caller's transaction.
    """

    def __init__(self, settings: OutboxSettings | None = None, **overrides: Any) -> None:
        base = settings or OutboxSettings()
        self.settings = replace(base, **overrides) if overrides else base
        queries = bound(self.settings.schema)
        self._insert_one, self._insert_many = queries["insert_message"], queries["insert_messages"]

    def message(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: timedelta | float | None = None,
        content_type: str | None = None,
    ) -> Message:
        """A validated message for `write_many`; raises a typed error for bad input."""
        return build_message(
            self.settings,
            topic,
            payload,
            key=key,
            headers=headers,
            delay=delay,
            content_type=content_type,
        )

    def write(self, tx: Any, topic: str, payload: Any, **options: Any) -> Message:
        """Write one message in `tx` (psycopg Connection, SQLAlchemy Session or Connection)."""
        return self.write_many(tx, [self.message(topic, payload, **options)])[0]

    async def awrite(self, tx: Any, topic: str, payload: Any, **options: Any) -> Message:
        """Write one message in an async `tx` (psycopg or SQLAlchemy async)."""
        return (await self.awrite_many(tx, [self.message(topic, payload, **options)]))[0]

    def write_many(self, tx: Any, messages: Sequence[Message]) -> list[Message]:
        """Write several messages in one round trip; returns them with their database times."""
        if not messages:
            return []
        conn = sync_connection(tx)
        check_transactional(conn, self.settings.allow_autocommit)
        with _schema_errors(self.settings.schema):
            rows = conn.execute(*self._statement(messages)).fetchall()
        return _stamped(messages, rows)

    async def awrite_many(self, tx: Any, messages: Sequence[Message]) -> list[Message]:
        """Async `write_many`."""
        if not messages:
            return []
        conn = await async_connection(tx)
        check_transactional(conn, self.settings.allow_autocommit)
        with _schema_errors(self.settings.schema):
            cursor = await conn.execute(*self._statement(messages))
        return _stamped(messages, await cursor.fetchall())

    def _statement(self, messages: Sequence[Message]) -> tuple[sql.Composed, dict[str, Any]]:
        """The insert for `messages` and its parameters: a single row has a cheaper form."""
        channel = self.settings.notify_channel if self.settings.notify else None
        if len(messages) == 1:
            m = messages[0]
            return self._insert_one, {
                "message_id": m.message_id,
                "topic": m.topic,
                "key": m.key,
                "payload": m.payload,
                "content_type": m.content_type,
                "headers": Jsonb(dict(m.headers)),
                "delay": m.delay.total_seconds() if m.delay else 0.0,
                "channel": channel,
            }
        return self._insert_many, {
            "message_ids": [m.message_id for m in messages],
            "topics": [m.topic for m in messages],
            "keys": [m.key for m in messages],
            "payloads": [m.payload for m in messages],
            "content_types": [m.content_type for m in messages],
            "headers": [Jsonb(dict(m.headers)) for m in messages],
            "delays": [m.delay.total_seconds() if m.delay else 0.0 for m in messages],
            "channel": channel,
        }


@contextmanager
def _schema_errors(schema: str) -> Iterator[None]:
    try:
        yield
    except (errors.UndefinedTable, errors.InvalidSchemaName) as exc:
        raise SchemaNotMigrated(
            f"the outboxkit tables are missing in schema {schema!r}: run `outboxkit migrate`"
        ) from exc
    except errors.CheckViolation as exc:
        # A `Message` built by hand skips `outbox.message`'s checks; the table's (migration
        # 0004) still hold. The caller's transaction is aborted either way.
        if exc.diag.constraint_name == "outbox_messages_topic_bytes":
            raise InvalidTopic("a topic is over 255 bytes of UTF-8") from exc
        if exc.diag.constraint_name == "outbox_messages_key_bytes":
            raise InvalidMessage("a key is over 1024 bytes of UTF-8") from exc
        raise


def _stamped(messages: Sequence[Message], rows: Sequence[Any]) -> list[Message]:
    times = {row[0]: (row[1], row[2]) for row in rows}
    return [
        replace(m, created_at=times[m.message_id][0], available_at=times[m.message_id][1])
        for m in messages
    ]

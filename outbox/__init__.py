"""Write events in the same transaction as your business rows.

    from outboxkit import outbox

    with psycopg.connect(dsn) as conn:           # a transaction, not autocommit
        conn.execute("INSERT INTO orders …")
        outbox.write(conn, "order.created", {"id": 42}, key="order-42")
    # committed together, or not at all

`outbox.write`/`write_many` take a psycopg `Connection` or a SQLAlchemy `Session`/`Connection`;
`outbox.awrite`/`awrite_many` take a psycopg `AsyncConnection` or a SQLAlchemy
`AsyncSession`/`AsyncConnection`. For another schema or limits, make your own
`Outbox(schema=…)`; the module-level functions use a default one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outboxkit.outbox.errors import (
    ChecksumMismatch,
    ConfigurationError,
    DatabaseUnavailable,
    InvalidHeaders,
    InvalidMessage,
    InvalidTopic,
    MigrationError,
    OutboxkitError,
    PayloadNotSerializable,
    PayloadTooLarge,
    SchemaNotMigrated,
    ShutdownStuck,
    TransactionRequired,
    UnsupportedConnection,
)
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message
from outboxkit.outbox.settings import OutboxSettings
from outboxkit.outbox.writer import Outbox

_default: Outbox | None = None


def default_outbox() -> Outbox:
    """The `Outbox` with default settings behind the module-level functions."""
    global _default
    if _default is None:
        _default = Outbox()
    return _default


def write(tx: Any, topic: str, payload: Any, **options: Any) -> Message:
    """Write one message in the caller's transaction. See `Outbox.write`."""
    return default_outbox().write(tx, topic, payload, **options)


async def awrite(tx: Any, topic: str, payload: Any, **options: Any) -> Message:
    """Write one message in the caller's async transaction. See `Outbox.awrite`."""
    return await default_outbox().awrite(tx, topic, payload, **options)


def message(topic: str, payload: Any, **options: Any) -> Message:
    """A validated message for `write_many`. See `Outbox.message`."""
    return default_outbox().message(topic, payload, **options)


def write_many(tx: Any, messages: Sequence[Message]) -> list[Message]:
    """Write several messages in one round trip. See `Outbox.write_many`."""
    return default_outbox().write_many(tx, messages)


async def awrite_many(tx: Any, messages: Sequence[Message]) -> list[Message]:
    """Async `write_many`."""
    return await default_outbox().awrite_many(tx, messages)


__all__ = [
    "ChecksumMismatch",
    "ConfigurationError",
    "DatabaseUnavailable",
    "InvalidHeaders",
    "InvalidMessage",
    "InvalidTopic",
    "Message",
    "MigrationError",
    "Outbox",
    "OutboxSettings",
    "OutboxkitError",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "SchemaNotMigrated",
    "ShutdownStuck",
    "TransactionRequired",
    "UnsupportedConnection",
    "awrite",
    "awrite_many",
    "default_outbox",
    "message",
    "uuid7",
    "write",
    "write_many",
]

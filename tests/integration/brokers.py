"""Broker fixtures for the publisher tests: real servers, never mocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from outboxkit.devservers import NatsServer, PostgresServer
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, Message
from tests.conftest import Database, new_database


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server with JetStream for the session; tests isolate by stream name."""
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def target_db(pg_server: PostgresServer, template_db: str) -> Iterator[Database]:
    """A second migrated database: the Postgres-to-Postgres publisher's target."""
    yield from new_database(pg_server, template_db)


def unique_stream() -> str:
    return f"T{uuid.uuid4().hex[:12].upper()}"


def sample_messages(count: int, topic: str = "order.created") -> list[Message]:
    """A varied batch: JSON and bytes payloads, with and without keys and user headers."""
    created = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    messages = []
    for i in range(count):
        binary = i % 5 == 0
        messages.append(
            Message(
                message_id=uuid7(),
                topic=f"{topic}.{i % 3}" if i % 2 else topic,
                payload=bytes([i % 256, 0, 255]) * 3 if binary else b'{"n":%d,"s":"\xc3\xa9"}' % i,
                key=None if i % 4 == 0 else f"key-{i % 7}",
                headers={} if i % 3 == 0 else {"traceparent": f"00-{i:032x}-01", "x-n": str(i)},
                content_type=BYTES_CONTENT_TYPE if binary else "application/json",
                created_at=created,
            )
        )
    return messages

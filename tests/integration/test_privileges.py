"""The roles the migrations grant are enough to write, relay and consume, and no more."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

import outbox
from inbox import Inbox
from outbox.message import Message
from relay import Relay, RelaySettings
from tests.support.publishers import RecordingPublisher
from tests.support.waiting import eventually


def login(admin: psycopg.Connection[Any], dsn: str, role: str) -> str:
    name = f"{role}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE {role}')
    admin.execute("CREATE TABLE IF NOT EXISTS secrets (x int)")
    return dsn.replace("postgres@", f"{name}@")


def test_writer_role_can_write_but_not_read_messages(
    admin: psycopg.Connection[Any], dsn: str
) -> None:
    writer = login(admin, dsn, "outboxkit_writer")
    with psycopg.connect(writer) as conn:
        written = outbox.write(conn, "order.created", {"id": 1}, key="k")
        conn.commit()
        assert written.created_at is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM outboxkit.outbox_messages")


async def test_relay_role_is_enough_to_relay(admin: psycopg.Connection[Any], dsn: str) -> None:
    relay_dsn = login(admin, dsn, "outboxkit_relay")
    with psycopg.connect(dsn) as conn:
        outbox.write_many(conn, [outbox.message("t", n, key=f"k{n % 3}") for n in range(20)])
    publisher = RecordingPublisher()
    relay = Relay(
        RelaySettings(dsn=relay_dsn, broker_url="test://", poll_interval=0.05), publisher=publisher
    )
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _value(len(publisher.acked) == 20))
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    with psycopg.connect(relay_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM secrets")
    with psycopg.connect(relay_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO outboxkit.outbox_messages (message_id, topic, partition, payload,"
            " content_type) VALUES (gen_random_uuid(), 't', 0, '', 'x')"
        )


def test_consumer_role_can_dedup_and_chain(admin: psycopg.Connection[Any], dsn: str) -> None:
    consumer_dsn = login(admin, dsn, "outboxkit_consumer")
    ib = Inbox(consumer="billing")

    @ib.handler("order.created")
    def chain(tx: psycopg.Connection[Any], message: Message) -> None:
        outbox.write(tx, "invoice.created", message.json())

    with psycopg.connect(consumer_dsn) as conn:
        message = outbox.message("order.created", {"id": 1})
        with conn.transaction():
            assert ib.handle(conn, message)
        with conn.transaction():
            assert not ib.handle(conn, message)


async def _value(flag: bool) -> bool:
    return flag

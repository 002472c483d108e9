"""`dead-letters retry --inbox` never retries a dead letter made from a broken envelope."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.inbox import Inbox
from outboxkit.inbox import admin as inbox_admin
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.envelope import Malformed
from outboxkit.outbox.message import Message
from tests.integration.test_inbox_durable import settings as durable_settings


def test_a_malformed_dead_letter_is_not_retried_over_a_handled_copy(
    admin: psycopg.Connection[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken, failed = uuid.uuid4(), uuid.uuid4()
    # The broken envelope was dead-lettered (no dedup row), then a well-formed copy with the
    # same id arrived and was handled.
    admin.execute(
        "INSERT INTO outboxkit.inbox_dead_letters (consumer, message_id, topic, key,"
        " received_at, attempts, last_error) VALUES"
        " ('billing', %s, 'orders.created', 'k', now(), 0, 'malformed envelope: NUL in key'),"
        " ('billing', %s, 'orders.created', 'k', now(), 5, 'ValueError: handler failed')",
        (broken, failed),
    )
    admin.execute(
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic, key, processed_at)"
        " VALUES ('billing', %s, 'orders.created', 'k', now())",
        (broken,),
    )
    retried = inbox_admin.retry_dead_letters(dsn, consumer="billing")
    assert [d.message_id for d in retried] == [failed]
    assert "not retrying" in caplog.text and str(broken) in caplog.text
    row = admin.execute(
        "SELECT processed_at IS NOT NULL FROM outboxkit.inbox_messages WHERE message_id = %s",
        (broken,),
    ).fetchone()
    assert row == (True,)  # the handled copy is untouched: not handled again
    left = admin.execute(
        "SELECT message_id FROM outboxkit.inbox_dead_letters WHERE consumer = 'billing'"
    ).fetchall()
    assert left == [(broken,)]  # still there, to list or purge


@pytest.mark.parametrize("mode", ["idempotent", "durable"])
async def test_a_genuine_dead_letter_replaces_a_malformed_one_with_its_id(
    dsn: str, mode: str
) -> None:
    """A broken envelope carrying the id of a real message reached the inbox first (forged, or
    a broker that mangled a copy). When the real message's handler then keeps failing, its
    dead letter must not be dropped behind the malformed one: it replaces it."""
    ib = Inbox(consumer="billing")

    @ib.handler("orders.*")
    async def fail(tx: psycopg.AsyncConnection[Any], m: Message) -> None:
        raise ValueError("handler failed")

    message = outbox.message("orders.created", {"n": 1}, key="k")
    slot = Slot(ib, durable_settings(dsn))
    try:
        forged = Malformed("NUL in key", b"junk", message.message_id, "orders.created", None)
        await slot.bury_malformed([forged])
        if mode == "idempotent":
            await slot.bury(message, 5, "ValueError: handler failed")
        else:
            await slot.store([message])
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE outboxkit.inbox_messages SET attempts = 4 WHERE message_id = %s",
                    (message.message_id,),
                )
            await slot.process_stored()  # max_attempts 5: this fifth attempt buries it
    finally:
        await slot.reset()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT attempts, last_error, payload FROM outboxkit.inbox_dead_letters"
        )
        rows = await cursor.fetchall()
    assert len(rows) == 1
    attempts, error, payload = rows[0]
    assert attempts == 5 and "handler failed" in error and bytes(payload) == message.payload

"""`dead-letters retry --inbox` never retries a dead letter made from a broken envelope."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from inbox import admin as inbox_admin


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

"""The consumer the fault scenarios run: it records every handled message as an effect.

`effects` has no unique constraint on purpose: only the inbox keeps it free of doubles, so a
double-processed message shows up as two rows.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outboxkit.inbox import Inbox
from outboxkit.outbox.message import Message

ib = Inbox(consumer="faults")

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS effects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  uuid NOT NULL,
    key         text,
    seq         integer,
    handled_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    pid         integer NOT NULL DEFAULT pg_backend_pid()
)
"""

POISON = "poison"


@ib.handler("faults.*")
def record(tx: psycopg.Connection[Any], message: Message) -> None:
    """Record the effect; a payload marked poison always fails."""
    body = message.json()
    if body.get(POISON):
        raise ValueError("poison message")
    tx.execute(
        "INSERT INTO effects (message_id, key, seq) VALUES (%s, %s, %s)",
        (message.message_id, message.key, body.get("seq")),
    )

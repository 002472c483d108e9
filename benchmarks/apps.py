"""Inbox apps the benchmarks run with `outboxkit consume --app benchmarks.apps:NAME`.

Their handler does what a small real handler does: one insert of its own, in the inbox's
transaction. `HANDLED_TABLE` is created by `create_handled_table` in the consumer database.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outboxkit.inbox import Inbox
from outboxkit.outbox.message import Message

HANDLED_TABLE = """
CREATE TABLE IF NOT EXISTS bench_handled (
    message_id uuid PRIMARY KEY,
    handled_at timestamptz NOT NULL
)
"""
RECORD = "INSERT INTO bench_handled (message_id, handled_at) VALUES (%s, clock_timestamp())"


def create_handled_table(dsn: str) -> None:
    """The handlers' own table, in the consumer's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HANDLED_TABLE)


def record(tx: Any, message: Message) -> None:
    """The handler: record the message and the moment it was handled."""
    tx.execute(RECORD, (message.message_id,))


latency = Inbox(consumer="bench-latency")
latency.handler("*")(record)

throughput = Inbox(consumer="bench-inbox")
throughput.handler("*")(record)

durable = Inbox(consumer="bench-inbox-durable")
durable.handler("*")(record)

stored = Inbox(consumer="bench-inbox-stored")
stored.handler("*")(record)

# The same, opted in to pipelined handlers.
pipelined = Inbox(consumer="bench-inbox-pipelined", pipelined=True)
pipelined.handler("*")(record)

"""Two consumer batches holding the same messages in opposite orders (duplicate deliveries to
two fetchers or processes) must queue for each other, not deadlock.

Found by fault scenario 12: before batches locked their messages in one order, the two
dedup INSERTs waited on each other's uncommitted rows, PostgreSQL killed one transaction as
a deadlock, the runner redelivered its batch, and the next batches collided again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from outboxkit.inbox import ConsumerSettings, Inbox
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message

ib = Inbox(consumer="lock-order")


@ib.handler("orders.*")
def slow_handler(tx: psycopg.Connection[Any], message: Message) -> None:
    tx.execute("INSERT INTO lock_order_effects (message_id) VALUES (%s)", (message.message_id,))
    time.sleep(0.3)  # both batches are inside their transactions at the same time


async def test_batches_with_the_same_messages_in_opposite_orders_do_not_deadlock(
    dsn: str,
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE lock_order_effects (message_id uuid NOT NULL)")
    first, second = (
        Message(message_id=uuid7(), topic="orders.created", payload=b"{}", key=None)
        for _ in range(2)
    )
    settings = ConsumerSettings(dsn=dsn, broker_url="nats://unused")
    slots = [Slot(ib, settings), Slot(ib, settings)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                slots[0].handle_many([first, second]),
                slots[1].handle_many([second, first]),
            ),
            timeout=60,  # a hang guard
        )
    finally:
        for slot in slots:
            await slot.reset()
    forward, backward = results
    assert not [r for r in (*forward, *backward) if isinstance(r, Exception)], results
    assert sorted([forward[0], backward[1]]) == [False, True]  # `first`: handled once
    assert sorted([forward[1], backward[0]]) == [False, True]  # `second`: handled once
    with psycopg.connect(dsn) as conn:
        effects = conn.execute(
            "SELECT message_id, count(*) FROM lock_order_effects GROUP BY 1"
        ).fetchall()
    assert sorted(effects) == sorted([(first.message_id, 1), (second.message_id, 1)])

"""A consumer batch in one transaction: the optimistic pass (one statement records the batch,
handlers run without savepoints, pipelined if the inbox asks) and its fallback to a savepoint
per message, for sync and async handlers alike."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from outboxkit.inbox import ConsumerSettings, Inbox
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message

POISON = b'{"poison": true}'
SWALLOW = b'{"swallow": true}'  # the handler catches its own SQL error and carries on
SLOW = b'{"slow": true}'  # the handler's statement hits statement_timeout
BAD_SQL = UUID("00000000-0000-0000-0000-00000000bad0")  # the effects table refuses it


def effects(dsn: str) -> Counter[Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT message_id FROM batch_effects").fetchall()
    return Counter(row[0] for row in rows)


INSERT = "INSERT INTO batch_effects (message_id) VALUES (%s)"
TIMEOUT = "SET LOCAL statement_timeout = '50ms'"
SLEEP = "SELECT pg_sleep(2)"


def make_inbox(kind: str, calls: Counter[Any]) -> Inbox:
    ib = Inbox(consumer=f"batches-{kind}", pipelined=kind.endswith("pipelined"))

    if kind.startswith("sync"):

        @ib.handler("orders.*")
        def handle(tx: psycopg.Connection[Any], message: Message) -> None:
            calls[message.message_id] += 1
            tx.execute(INSERT, (message.message_id,))
            if message.payload == POISON:
                raise ValueError("poison")
            if message.payload == SWALLOW:
                with contextlib.suppress(psycopg.errors.CheckViolation):
                    tx.execute(INSERT, (BAD_SQL,))
            if message.payload == SLOW:
                tx.execute(TIMEOUT)
                tx.execute(SLEEP)

    else:

        @ib.handler("orders.*")
        async def ahandle(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
            calls[message.message_id] += 1
            await tx.execute(INSERT, (message.message_id,))
            if message.payload == POISON:
                raise ValueError("poison")
            if message.payload == SWALLOW:
                with contextlib.suppress(psycopg.errors.CheckViolation):
                    await tx.execute(INSERT, (BAD_SQL,))
            if message.payload == SLOW:
                await tx.execute(TIMEOUT)
                await tx.execute(SLEEP)

    return ib


def order(payload: bytes = b"{}", topic: str = "orders.created") -> Message:
    return Message(message_id=uuid7(), topic=topic, payload=payload, key=None)


@pytest.fixture(params=["sync", "async", "sync-pipelined", "async-pipelined"])
async def setup(
    request: pytest.FixtureRequest, dsn: str
) -> AsyncIterator[tuple[Slot, Counter[Any]]]:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE batch_effects (message_id uuid NOT NULL, "
            "CHECK (message_id <> '00000000-0000-0000-0000-00000000bad0'))"
        )
    calls: Counter[Any] = Counter()
    slot = Slot(make_inbox(request.param, calls), ConsumerSettings(dsn=dsn, broker_url="x://"))
    try:
        yield slot, calls
    finally:
        await slot.reset()


async def test_a_healthy_batch_runs_each_handler_once(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    slot, calls = setup
    a, b = order(), order()
    assert await slot.handle_many([a, b, a]) == [True, True, False]
    assert await slot.handle_many([b, a]) == [False, False]
    assert calls == Counter({a.message_id: 1, b.message_id: 1})
    assert effects(dsn) == calls


async def test_a_failing_handler_falls_back_to_savepoints(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    slot, calls = setup
    a, poison, c = order(), order(POISON), order()
    results = await slot.handle_many([a, poison, c, a])
    assert results[0] is True and results[2] is True and results[3] is False
    assert isinstance(results[1], ValueError)
    # The optimistic pass ran a and the poison, then rolled back; the savepoint pass ran all.
    assert calls == Counter({a.message_id: 2, poison.message_id: 2, c.message_id: 1})
    assert effects(dsn) == Counter({a.message_id: 1, c.message_id: 1})
    # A cautious batch (it holds a redelivery) goes to savepoints at once.
    results = await slot.handle_many([poison], cautious=True)
    assert isinstance(results[0], ValueError) and calls[poison.message_id] == 3


async def test_an_unknown_topic_is_reported_per_message(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    slot, calls = setup
    a, stray = order(), order(topic="invoices.created")
    results = await slot.handle_many([a, stray])
    assert results[0] is True and type(results[1]).__name__ == "NoHandler"
    assert calls == Counter({a.message_id: 1}) and effects(dsn) == calls


async def test_a_failing_statement_surfaces_at_the_pipeline_sync_and_falls_back(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    """In the pipelined pass a handler's failed INSERT raises only when the batch syncs;
    the batch then reruns with savepoints and only the bad message fails."""
    slot, calls = setup
    assert not calls
    a, c = order(), order()
    bad = Message(message_id=BAD_SQL, topic="orders.created", payload=b"{}", key=None)
    results = await slot.handle_many([a, bad, c])
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], psycopg.errors.CheckViolation)
    assert effects(dsn) == Counter({a.message_id: 1, c.message_id: 1})


async def test_durable_batches_fall_back_the_same_way(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    slot, calls = setup
    a, poison, c = order(), order(POISON), order()
    bad = Message(message_id=BAD_SQL, topic="orders.created", payload=b"{}", key=None)
    await slot.store([a, poison, bad, c])
    result = await slot.process_stored()
    assert len(result.done) == 2 and len(result.retry) == 2
    assert effects(dsn) == Counter({a.message_id: 1, c.message_id: 1})
    assert calls[a.message_id] == 2  # the optimistic pass, rolled back, then the careful one
    # Stored rows that failed before go straight to the careful pass.
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE outboxkit.inbox_messages SET available_at = now()")
    result = await slot.process_stored()
    assert len(result.retry) == 2 and calls[poison.message_id] == 3


async def test_a_handler_that_swallows_its_sql_error_cannot_lose_the_batch(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    """The swallowed error leaves the transaction aborted, and PostgreSQL would answer COMMIT
    with a silent ROLLBACK: the optimistic pass must notice before reporting success."""
    slot, _ = setup
    a, swallow, c = order(), order(SWALLOW), order()
    results = await slot.handle_many([a, swallow, c])
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], psycopg.Error), results
    assert effects(dsn) == Counter({a.message_id: 1, c.message_id: 1})


async def test_a_statement_timeout_is_the_message_failure_not_a_lost_connection(
    setup: tuple[Slot, Counter[Any]], dsn: str
) -> None:
    slot, _ = setup
    a, slow, c = order(), order(SLOW), order()
    results = await slot.handle_many([a, slow, c])
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], psycopg.errors.QueryCanceled), results
    assert effects(dsn) == Counter({a.message_id: 1, c.message_id: 1})
    await slot.store([slow2 := order(SLOW), d := order()])
    result = await slot.process_stored()
    assert len(result.done) == 1 and len(result.retry) == 1, result
    assert effects(dsn)[d.message_id] == 1 and effects(dsn)[slow2.message_id] == 0

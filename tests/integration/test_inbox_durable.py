"""Durable inbox mode and retention on a real database (the inbox table as the source)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox, Mode, prune
from outboxkit.inbox import admin as inbox_admin
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.message import Message
from tests.support.waiting import eventually


def settings(dsn: str, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": dsn,  # postgresql:// source: the inbox table itself
        "mode": Mode.DURABLE,
        "concurrency": 3,
        "batch_size": 10,
        "poll_interval": 0.05,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "max_attempts": 3,
        "prune_interval": 0,
    }
    return ConsumerSettings(**(base | overrides))


@contextlib.asynccontextmanager
async def running(runner: ConsumerRunner) -> AsyncIterator[ConsumerRunner]:
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def effects(admin: psycopg.Connection[Any]) -> None:
    admin.execute(
        "CREATE TABLE effects (key text, n int, at timestamptz DEFAULT clock_timestamp())"
    )


def unprocessed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outboxkit.inbox_messages WHERE processed_at IS NULL"
        ).fetchone()
        assert row is not None
        return int(row[0])


async def store(dsn: str, ib: Inbox, messages: list[Message]) -> None:
    slot = Slot(ib, settings(dsn))
    try:
        await slot.store(messages)
        await slot.store(messages[:5])  # a redelivery: dropped on arrival
    finally:
        await slot.reset()


@pytest.mark.usefixtures("effects")
async def test_durable_mode_keeps_key_order_under_retries(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    ib = Inbox(consumer="ledger")
    failed_once: set[str] = set()

    @ib.handler("entry.*")
    def record(tx: psycopg.Connection[Any], message: Message) -> None:
        body = message.json()
        tag = f"{message.key}:{body['n']}"
        if body["n"] % 4 == 1 and tag not in failed_once:
            failed_once.add(tag)
            raise RuntimeError("transient")
        tx.execute("INSERT INTO effects (key, n) VALUES (%s, %s)", (message.key, body["n"]))

    messages = [
        outbox.message("entry.posted", {"n": n}, key=f"acct-{k}")
        for n in range(12)
        for k in range(4)
    ]
    await store(dsn, ib, messages)
    async with running(ConsumerRunner(ib, settings(dsn))):
        await eventually(lambda: asyncio.to_thread(lambda: unprocessed(dsn) == 0))
    rows = admin.execute("SELECT key, n FROM effects ORDER BY at").fetchall()
    assert len(rows) == 48
    for k in range(4):
        assert [n for key, n in rows if key == f"acct-{k}"] == list(range(12))
    assert failed_once  # retries happened


async def test_poison_message_is_dead_lettered_then_retried(dsn: str) -> None:
    ib = Inbox(consumer="ledger")
    broken = {"yes": True}

    @ib.handler("entry.*")
    def record(tx: psycopg.Connection[Any], message: Message) -> None:
        if broken["yes"] and message.json()["n"] == 2:
            raise ValueError("cannot parse entry")

    await store(dsn, ib, [outbox.message("entry.posted", {"n": n}, key="a") for n in range(5)])
    async with running(ConsumerRunner(ib, settings(dsn))):
        await eventually(lambda: asyncio.to_thread(lambda: unprocessed(dsn) == 0))
        (dead,) = inbox_admin.find_dead_letters(dsn, consumer="ledger")
        assert dead.attempts == 3 and "cannot parse entry" in dead.last_error
        broken["yes"] = False
        assert len(inbox_admin.retry_dead_letters(dsn, consumer="ledger")) == 1
        await eventually(lambda: asyncio.to_thread(lambda: unprocessed(dsn) == 0))
    assert inbox_admin.find_dead_letters(dsn) == []


async def test_unknown_topic_is_dead_lettered_without_blocking(dsn: str) -> None:
    ib = Inbox(consumer="ledger")
    seen: list[int] = []

    @ib.handler("entry.*")
    async def record(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        seen.append(message.json()["n"])

    await store(
        dsn,
        ib,
        [outbox.message("mystery.topic", {"n": -1})]
        + [outbox.message("entry.posted", {"n": n}) for n in range(5)],
    )
    async with running(ConsumerRunner(ib, settings(dsn))):
        await eventually(lambda: asyncio.to_thread(lambda: unprocessed(dsn) == 0))
    assert sorted(seen) == list(range(5))
    (dead,) = inbox_admin.find_dead_letters(dsn)
    assert dead.topic == "mystery.topic" and "NoHandler" in dead.last_error


async def test_prune_keeps_rows_inside_the_window(dsn: str, admin: psycopg.Connection[Any]) -> None:
    ib = Inbox(consumer="ledger")

    @ib.handler("*")
    def noop(tx: psycopg.Connection[Any], message: Message) -> None:
        return None

    old, recent = order_messages(3), order_messages(2)
    with psycopg.connect(dsn) as conn:
        for message in old + recent:
            with conn.transaction():
                ib.handle(conn, message)
    admin.execute(
        "UPDATE outboxkit.inbox_messages SET processed_at = now() - interval '8 days'"
        " WHERE message_id = ANY(%s)",
        ([m.message_id for m in old],),
    )
    removed = await prune(dsn, older_than=7 * 86_400, consumer="ledger")
    assert removed == 3
    with psycopg.connect(dsn) as conn:
        # Inside the window a redelivery is still recognised; past it, it is handled again.
        with conn.transaction():
            assert ib.handle(conn, recent[0]) is False
        with conn.transaction():
            assert ib.handle(conn, old[0]) is True


def order_messages(n: int) -> list[Message]:
    return [outbox.message("order.created", {"i": i}) for i in range(n)]

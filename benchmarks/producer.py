"""Producer overhead: a business transaction with `outbox.write` against the same without it.

Each surface (psycopg sync and async, SQLAlchemy sync and async) runs the same transaction
(one `INSERT INTO bench_orders`, commit) with and without one `outbox.write`/`awrite` in it;
batches compare `write_many` of 100 messages with a raw multi-row INSERT of the same rows
into the outbox table (JSON encoded in the loop in both). The two sides alternate in rounds,
so that a burst of noise from other work hits both alike. Commits are durable (fsync on).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from benchmarks.env import SCHEMA, Context
from benchmarks.model import Result, Row
from outboxkit import outbox
from outboxkit.outbox.ids import uuid7

NAME = "producer"
TITLE = "Producer overhead"
ROUNDS = 5
TOPIC = "order.created"

ORDERS = """
CREATE TABLE bench_orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL,
    total integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_ORDER = "INSERT INTO bench_orders (customer, total) VALUES (%s, %s)"
INSERT_ORDER_SA = text("INSERT INTO bench_orders (customer, total) VALUES (:customer, :total)")
_RAW_ROW = "(%s, %s, %s, (hashtext(%s) & 2147483647) %% 16, %s, 'application/json', '{}')"

SyncStep = Callable[[int, bool], None]
AsyncStep = Callable[[int, bool], Awaitable[None]]


def payload(i: int) -> dict[str, Any]:
    return {"order_id": i, "customer": f"customer-{i % 100}", "total": (i * 7) % 1000}


def alternate_sync(step: SyncStep, count: int) -> tuple[float, float]:
    """Mean seconds per transaction (without, with), alternating in ROUNDS rounds."""
    spent = [0.0, 0.0]
    per_round = max(count // ROUNDS, 1)
    for r in range(ROUNDS):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            started = time.perf_counter()
            for i in range(per_round):
                step(r * per_round + i, bool(side))
            spent[side] += time.perf_counter() - started
    total = per_round * ROUNDS
    return spent[0] / total, spent[1] / total


async def alternate_async(step: AsyncStep, count: int) -> tuple[float, float]:
    """`alternate_sync` for async steps."""
    spent = [0.0, 0.0]
    per_round = max(count // ROUNDS, 1)
    for r in range(ROUNDS):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            started = time.perf_counter()
            for i in range(per_round):
                await step(r * per_round + i, bool(side))
            spent[side] += time.perf_counter() - started
    total = per_round * ROUNDS
    return spent[0] / total, spent[1] / total


def psycopg_sync(dsn: str, count: int) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:

        def step(i: int, with_outbox: bool) -> None:
            with conn.transaction():
                conn.execute(INSERT_ORDER, (f"customer-{i % 100}", i % 1000))
                if with_outbox:
                    outbox.write(conn, TOPIC, payload(i), key=f"order-{i}")

        return alternate_sync(step, count)


async def psycopg_async(dsn: str, count: int) -> tuple[float, float]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:

        async def step(i: int, with_outbox: bool) -> None:
            async with conn.transaction():
                await conn.execute(INSERT_ORDER, (f"customer-{i % 100}", i % 1000))
                if with_outbox:
                    await outbox.awrite(conn, TOPIC, payload(i), key=f"order-{i}")

        return await alternate_async(step, count)


def sqlalchemy_sync(dsn: str, count: int) -> tuple[float, float]:
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:

        def step(i: int, with_outbox: bool) -> None:
            with Session(engine) as session, session.begin():
                session.execute(INSERT_ORDER_SA, {"customer": f"customer-{i % 100}", "total": i})
                if with_outbox:
                    outbox.write(session, TOPIC, payload(i), key=f"order-{i}")

        return alternate_sync(step, count)
    finally:
        engine.dispose()


async def sqlalchemy_async(dsn: str, count: int) -> tuple[float, float]:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:

        async def step(i: int, with_outbox: bool) -> None:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(
                    INSERT_ORDER_SA, {"customer": f"customer-{i % 100}", "total": i}
                )
                if with_outbox:
                    await outbox.awrite(session, TOPIC, payload(i), key=f"order-{i}")

        return await alternate_async(step, count)
    finally:
        await engine.dispose()


def batches(dsn: str, count: int, size: int) -> tuple[float, float]:
    """(raw multi-row INSERT, write_many) seconds per transaction of `size` messages."""
    rows = sql.SQL(", ").join([sql.SQL(_RAW_ROW)] * size)
    raw = sql.SQL(
        "INSERT INTO {} (message_id, topic, key, partition, payload, content_type, headers) "
        "VALUES {}"
    ).format(sql.Identifier(SCHEMA, "outbox_messages"), rows)
    with psycopg.connect(dsn) as conn:

        def step(i: int, with_outbox: bool) -> None:
            first = i * size
            with conn.transaction():
                if with_outbox:
                    messages = [
                        outbox.message(TOPIC, payload(n), key=f"order-{n}")
                        for n in range(first, first + size)
                    ]
                    outbox.write_many(conn, messages)
                    return
                params: list[Any] = []
                for n in range(first, first + size):
                    key = f"order-{n}"
                    params += [uuid7(), TOPIC, key, key, json.dumps(payload(n)).encode()]
                conn.execute(raw, params)

        return alternate_sync(step, count)


def _rows(label: str, reference_label: str, times: tuple[float, float]) -> Row:
    without, with_outbox = times
    return Row(
        label,
        with_outbox * 1000,
        "ms/tx",
        without * 1000,
        reference_label,
        lower_is_better=True,
        chart=True,
    )


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    dsn = ctx.database("bench_producer")
    count, batch_count, size = (
        ctx.sizes.producer_transactions,
        ctx.sizes.producer_batches,
        ctx.sizes.batch,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ORDERS)
        same = "same tx, no outbox"
        ctx.log(f"producer: psycopg sync, {count:,} transactions each")
        result.rows.append(_rows("psycopg sync: + outbox.write", same, psycopg_sync(dsn, count)))
        ctx.log("producer: psycopg async")
        result.rows.append(
            _rows("psycopg async: + outbox.awrite", same, await psycopg_async(dsn, count))
        )
        ctx.log("producer: SQLAlchemy sync")
        result.rows.append(
            _rows("SQLAlchemy Session: + outbox.write", same, sqlalchemy_sync(dsn, count))
        )
        ctx.log("producer: SQLAlchemy async")
        result.rows.append(
            _rows("SQLAlchemy AsyncSession: + awrite", same, await sqlalchemy_async(dsn, count))
        )
        ctx.log(f"producer: batches of {size}, {batch_count:,} transactions each")
        result.rows.append(
            _rows(
                f"write_many({size}) per tx",
                f"raw {size}-row INSERT",
                batches(dsn, batch_count, size),
            )
        )
        for row in result.rows:
            assert row.ours is not None and row.reference is not None
            result.notes.append(
                f"{row.label}: {row.ours - row.reference:+.3f} ms per transaction "
                f"({row.ours:.3f} vs {row.reference:.3f} ms)."
            )
        result.notes.append(
            f"{count:,} transactions per side on each surface ({batch_count:,} for batches), "
            f"alternating in {ROUNDS} rounds, one connection, durable commits (fsync on, "
            "synchronous_commit on): each transaction waits for its WAL flush, as in production."
        )
    finally:
        ctx.env.drop("bench_producer")
    return result

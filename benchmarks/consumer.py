"""Inbox throughput: messages/s from JetStream into the inbox, idempotent and durable.

N messages wait in a JetStream stream (published with the envelope, as the relay does).
Each run reads all of them through its own durable JetStream consumer, and its handler
makes one insert of its own (`bench_handled`). Rates come from the handlers' own
`clock_timestamp()`s: (N - 1) / (last - first).

- ours, idempotent: `outboxkit consume --mode idempotent` (a subprocess, defaults: batch
  100, concurrency 4).
- ours, durable: `--mode durable` (store and ack, then inbox workers claim in batches).
- ours, durable workers alone: N messages already stored; `--broker postgresql://…` runs
  only the workers.
- ours, durable workers alone with `Inbox(pipelined=True)` (handlers in pipeline mode).
- ceiling: only the handlers' own INSERTs, pipelined, 100 per transaction, one connection:
  what durable workers would reach if the framework cost nothing.
- reference: a raw loop in Python with the same shape (4 tasks, fetch 100, one transaction
  per batch: `INSERT INTO inbox_messages … ON CONFLICT DO NOTHING` per message plus the same
  handler insert, commit, then ack), with no framework around it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from benchmarks.apps import RECORD, create_handled_table
from benchmarks.brokers import MSG_ID, NatsTarget, sample_messages
from benchmarks.env import Context
from benchmarks.model import Result, Row, Target
from benchmarks.relays import Children, cli
from outboxkit.inbox import Inbox
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.ids import uuid7

NAME = "inbox"
TITLE = "Inbox throughput"
CONCURRENCY = 4
BATCH = 100
TOPIC = "bench.order"
RAW_RECORD = (
    "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic, key, processed_at) "
    "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (consumer, message_id) DO NOTHING RETURNING seq"
)


async def publish(js: Any, stream: str, prefix: str, count: int) -> None:
    """`count` messages into `stream`, with the envelope headers the relay sends."""
    config = StreamConfig(name=stream, subjects=[prefix + ">"], storage=StorageType.FILE)
    await js.add_stream(config)
    messages = sample_messages(count, TOPIC)
    for first in range(0, count, 1000):
        futures = []
        for message in messages[first : first + 1000]:
            headers = to_headers(message)
            headers[MSG_ID] = str(message.message_id)
            futures.append(await js.publish_async(prefix + TOPIC, message.payload, headers=headers))
        await asyncio.gather(*futures)


async def handled_rate(dsn: str, count: int, children: Children | None, within: float) -> float:
    """Wait until `count` messages were handled; their rate from the handlers' timestamps."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT count(*), extract(epoch FROM max(handled_at) - min(handled_at))::float8 "
                "FROM bench_handled"
            )
            row = await cursor.fetchone()
            assert row is not None
            done, span = int(row[0]), float(row[1] or 0.0)
            if done >= count:
                return (done - 1) / span if span > 0 else 0.0
            if children is not None:
                children.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"handled {done} of {count} in {within:.0f} s")
            await asyncio.sleep(0.2)


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn)


async def raw_consume(js: Any, stream: str, dsn: str, count: int) -> None:
    """The reference: fetch, one transaction per batch of raw inserts, commit, ack."""
    durable = "bench-inbox-raw"
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT
        ),
    )
    remaining = [count]

    def handle(conn: psycopg.Connection[Any], message_ids: list[str]) -> None:
        with conn.transaction():
            for message_id in message_ids:
                cursor = conn.execute(RAW_RECORD, ("bench-inbox-raw", message_id, TOPIC, None))
                if cursor.fetchone() is not None:
                    conn.execute(RECORD, (message_id,))

    async def worker() -> None:
        # Sync connections in threads, as the runner runs sync handlers.
        sub = await js.pull_subscribe_bind(durable, stream)
        conn: psycopg.Connection[Any] = await asyncio.to_thread(_connect, dsn)
        try:
            while remaining[0] > 0:
                try:
                    msgs = await sub.fetch(BATCH, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                ids = [str((msg.headers or {}).get(MSG_ID)) for msg in msgs]
                await asyncio.to_thread(handle, conn, ids)
                for msg in msgs:
                    await msg.ack()
                remaining[0] -= len(msgs)
        finally:
            await asyncio.to_thread(conn.close)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def handler_ceiling(dsn: str, count: int) -> float:
    """Messages/s if the framework cost nothing: only each handler's own INSERT, in psycopg
    pipeline mode, 100 per transaction, one connection (the GIL makes more threads moot)."""
    ids = [uuid7() for _ in range(count)]
    with _connect(dsn) as conn:
        started = time.perf_counter()
        for first in range(0, count, BATCH):
            with conn.pipeline(), conn.transaction():
                for message_id in ids[first : first + BATCH]:
                    conn.execute(RECORD, (message_id,))
        return count / (time.perf_counter() - started)


def store(dsn: str, consumer: str, count: int) -> None:
    """`count` messages stored for `consumer`'s durable workers, as the runner stores them."""
    inbox = Inbox(consumer=consumer)
    messages = sample_messages(count, TOPIC)
    with psycopg.connect(dsn) as conn:
        for first in range(0, count, 5000):
            with conn.transaction():
                conn.execute(
                    inbox.queries["store"], inbox.message_params(messages[first : first + 5000])
                )


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_handled")
        conn.execute("VACUUM ANALYZE")


async def run_ours(ctx: Context, dsn: str, broker: str, app: str, mode: str, count: int) -> float:
    children = Children(ctx.work_dir)
    argv = cli(
        "consume", "--app", f"benchmarks.apps:{app}", "--dsn", dsn, "--broker", broker,
        "--mode", mode, "--prune-interval", "0",
    )  # fmt: skip
    children.start(f"consumer-{app}", argv)
    try:
        return await handled_rate(dsn, count, children, within=max(120.0, count / 50))
    finally:
        await asyncio.to_thread(children.stop)


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    count = ctx.sizes.inbox_messages
    dsn = ctx.database("bench_inbox")
    target = NatsTarget(ctx.env.nats_url)
    stream, prefix = target.stream("inbox"), target.prefix("inbox")
    nc = await nats.connect(ctx.env.nats_url, name="outboxkit-bench-inbox")
    try:
        create_handled_table(dsn)
        js = nc.jetstream(timeout=30)
        ctx.log(f"inbox: publishing {count:,} messages to JetStream")
        await publish(js, stream, prefix, count)
        ctx.log("inbox: reference, raw INSERT … ON CONFLICT loop")
        raw_task = asyncio.create_task(raw_consume(js, stream, dsn, count))
        raw = await handled_rate(dsn, count, None, within=max(120.0, count / 50))
        await raw_task
        truncate(dsn)
        url = target.relay_url("inbox")
        ctx.log("inbox: ours, idempotent mode")
        idempotent = await run_ours(ctx, dsn, url, "throughput", "idempotent", count)
        truncate(dsn)
        ctx.log("inbox: ours, durable mode")
        durable = await run_ours(ctx, dsn, url, "durable", "durable", count)
        truncate(dsn)
        ctx.log("inbox: ours, durable workers on stored messages")
        store(dsn, "bench-inbox-stored", count)
        workers = await run_ours(ctx, dsn, dsn, "stored", "durable", count)
        truncate(dsn)
        ctx.log("inbox: ours, durable workers on stored messages, pipelined handlers")
        store(dsn, "bench-inbox-pipelined", count)
        pipelined = await run_ours(ctx, dsn, dsn, "pipelined", "durable", count)
        truncate(dsn)
        ctx.log("inbox: ceiling, the handlers' own statements alone, pipelined")
        ceiling = await asyncio.to_thread(handler_ceiling, dsn, count)
        ctx.shared["inbox_rate"] = idempotent
        raw_label = "raw INSERT … ON CONFLICT"
        result.rows += [
            Row("idempotent mode", idempotent, "msg/s", raw, raw_label, chart=True),
            Row("durable mode (store, ack, workers)", durable, "msg/s", raw, raw_label, chart=True),
            Row("durable workers alone (stored rows)", workers, "msg/s", raw, raw_label),
            Row(
                "durable workers alone, Inbox(pipelined=True)",
                pipelined,
                "msg/s",
                workers,
                "durable workers alone, default",
            ),
            Row(
                "durable workers alone, pipelined, vs the handlers' ceiling",
                pipelined,
                "msg/s",
                ceiling,
                "only the handler INSERTs, pipelined, 100 per tx",
            ),
        ]
        result.targets += [
            Target("idempotent ÷ raw ≥ 0.9", idempotent / raw if raw else None, 0.9),
            Target("durable mode ≥ 10,000 msg/s", durable, 10_000, unit="msg/s"),
            Target("durable workers alone ≥ 10,000 msg/s", workers, 10_000, unit="msg/s"),
            Target(
                "durable workers alone, pipelined ≥ 10,000 msg/s", pipelined, 10_000, unit="msg/s"
            ),
        ]
        result.notes.append(
            f"{count:,} messages of ~170 bytes; consumer defaults (batch {BATCH}, concurrency "
            f"{CONCURRENCY}); every handler inserts one row; durable commits (fsync on)."
        )
    finally:
        await nc.close()
        ctx.env.drop("bench_inbox")
    return result

"""Relay throughput: drain a pre-filled backlog into the broker, against D, P and H.

- ours: `outboxkit relay` (one subprocess, batch 500) drains N messages into the broker.
- D: the raw SQL claim-and-delete loop on the same table, per partition like the relay
  (`DELETE … WHERE id IN (SELECT id … WHERE partition = p ORDER BY id LIMIT n FOR UPDATE
  SKIP LOCKED) RETURNING …`, one transaction per batch), from Python with psycopg.
- P: the broker's own raw publish rate from Python, with the same batch size, subjects,
  payloads and headers: for NATS the faster of nats-py's `publish_async` + gather and plain
  PUBs with a reply subject each under one subscription (what our publisher does); for
  RabbitMQ aio-pika with publisher confirms.
- H = 1/(1/D + 1/P): what a relay that did nothing but those two steps, one after the
  other, could reach. Our ratio to H is the relay's own overhead (target ≥ 0.8).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import backlog
from benchmarks.brokers import sample_messages, targets
from benchmarks.env import SCHEMA, Context
from benchmarks.model import Result, Row, Target
from benchmarks.relays import drain

NAME = "relay"
TITLE = "Relay throughput"
BATCH = 500
P_SAMPLE_MAX = 50_000  # P is a rate: 50k messages measure it well enough

_CLAIM_DELETE = """
DELETE FROM {messages} WHERE id IN (
    SELECT id FROM {messages} WHERE partition = %(partition)s
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, message_id, topic, key, payload, content_type, headers, created_at, attempts
"""


def harmonic(d: float, p: float) -> float:
    """H = 1/(1/D + 1/P): two steps done one after the other."""
    return 1.0 / (1.0 / d + 1.0 / p) if d > 0 and p > 0 else 0.0


async def raw_claim_delete(dsn: str, batch: int, schema: str = SCHEMA) -> tuple[int, float]:
    """D: claim-and-delete every row, partition after partition; (messages, seconds)."""
    query = sql.SQL(_CLAIM_DELETE).format(messages=sql.Identifier(schema, "outbox_messages"))
    partitions = backlog.partitions(dsn, schema)
    done = 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        started = time.perf_counter()
        while True:
            found = 0
            for partition in range(partitions):
                async with conn.transaction():
                    cursor = await conn.execute(query, {"partition": partition, "limit": batch})
                    rows: list[Any] = await cursor.fetchall()
                found += len(rows)
            done += found
            if not found:
                break
        elapsed = time.perf_counter() - started
    return done, elapsed


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    found, notes = targets(ctx.env.nats_url, ctx.broker_urls)
    result.notes += [*ctx.shared.get("broker_notes", []), *notes]
    total = ctx.sizes.backlog
    dsn = ctx.database("bench_relay")
    try:
        ctx.log(f"relay: D, raw claim-and-delete of {total:,} rows")
        backlog.fill(dsn, total)
        done, seconds = await raw_claim_delete(dsn, BATCH)
        d = done / seconds
        for index, target in enumerate(found):
            ctx.log(f"relay: ours, {total:,} messages into {target.name}")
            backlog.fill(dsn, total)
            ours = await drain(dsn, target, f"relay{index}", total, ctx.work_dir, batch_size=BATCH)
            ctx.log(f"relay: P, raw publish to {target.name}")
            p = await target.raw_publish_rate(
                sample_messages(min(total, P_SAMPLE_MAX), backlog.TOPIC), BATCH
            )
            h = harmonic(d, p)
            keyless = None
            if index == 0:
                ctx.shared["relay_rate"] = ours.rate
                ctx.log(f"relay: ours, {total:,} keyless messages into {target.name}")
                backlog.fill(dsn, total, keys=0)
                keyless = await drain(
                    dsn, target, "relaynokey", total, ctx.work_dir, batch_size=BATCH
                )
            result.rows += [
                Row(
                    f"relay → {target.name}, vs H",
                    ours.rate,
                    "msg/s",
                    h,
                    "H = 1/(1/D + 1/P)",
                    chart=True,
                ),
                Row(f"relay → {target.name}, vs D", ours.rate, "msg/s", d, "D: raw claim+delete"),
                Row(
                    f"relay → {target.name}, vs P",
                    ours.rate,
                    "msg/s",
                    p,
                    f"P: raw {target.name} publish",
                    chart=index == 0,
                ),
            ]
            result.notes.append(
                f"{target.name}: the relay used {ours.cpu / max(ours.messages, 1) * 1e6:,.0f} µs "
                f"of CPU per message ({ours.cpu / ours.seconds:.0%} of one core while draining)."
                if ours.seconds > 0
                else f"{target.name}: no CPU figure (the drain was too short to time)."
            )
            if keyless is not None:
                result.rows.append(
                    Row(
                        f"relay → {target.name}, keyless backlog, vs H",
                        keyless.rate,
                        "msg/s",
                        h,
                        "H = 1/(1/D + 1/P)",
                    )
                )
            result.targets.append(
                Target(f"relay → {target.name} ÷ H ≥ 0.8", ours.rate / h if h else None, 0.8)
            )
        result.notes.append(
            f"Backlog {total:,} messages (~170-byte JSON payloads, 1,000 keys, "
            f"{backlog.partitions(dsn)} partitions), batch size {BATCH}, one relay subprocess. "
            "The relay's clock runs from the first delivery the harness sees to the commit of "
            "the last batch (broker holds all, outbox empty). D runs on a refilled copy of "
            "the same backlog; P publishes the same payloads and headers "
            f"(at most {P_SAMPLE_MAX:,}). The keyless row drains the same backlog without "
            "keys: the relay then sends a whole batch in one round instead of one round per "
            "message of a key (per-key order waits for each ack)."
        )
    finally:
        for target in found:
            await target.close()
        ctx.env.drop("bench_relay")
    return result

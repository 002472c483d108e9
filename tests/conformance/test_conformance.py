"""The conformance suite: every broker adapter pair passes it against its real server.

Tuned by each publisher's `capabilities` (ordering per key, broker-side dedup, size limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.outbox.errors import OutboxkitError
from outboxkit.outbox.message import Message
from outboxkit.relay import Relay, RelaySettings
from tests.conformance.cases.base import BrokerCase, BrokerServer
from tests.conformance.helpers import (
    TOPIC_PATTERN,
    connected_consumer,
    connected_publisher,
    consume,
    messages,
)
from tests.support.publishers import publish_until_acked
from tests.support.waiting import eventually

SECRET = "s3cr3t-pw"


async def test_round_trip_keeps_the_envelope(broker: BrokerServer) -> None:
    url = broker.fresh_url()
    publisher = await connected_publisher(url)
    consumer = await connected_consumer(url)
    try:
        sent = messages(40)
        outcomes = await publisher.publish(sent)
        assert all(o.acked for o in outcomes), outcomes
        received = {m.message_id: m for m in await consume(consumer, len(sent))}
    finally:
        await consumer.close()
        await publisher.close()
    for message in sent:
        got = received[message.message_id]
        assert (got.topic, got.key, got.payload, got.content_type) == (
            message.topic,
            message.key,
            message.payload,
            message.content_type,
        )
        assert dict(got.headers) == dict(message.headers)


async def test_order_per_key(broker: BrokerServer) -> None:
    url = broker.fresh_url()
    publisher = await connected_publisher(url)
    if not publisher.capabilities.ordered_per_key:
        await publisher.close()
        pytest.skip("this broker does not promise order per key")
    consumer = await connected_consumer(url)
    try:
        # as the relay sends them: one message per key per publish call, in write order
        rounds = [
            [
                Message(
                    message_id=outbox.uuid7(), topic="conf.step", key=f"k{k}", payload=b"%d" % n
                )
                for k in range(5)
            ]
            for n in range(10)
        ]
        for batch in rounds:
            assert all(o.acked for o in await publisher.publish(batch))
        received = await consume(consumer, 50)
    finally:
        await consumer.close()
        await publisher.close()
    for k in range(5):
        firsts: list[bytes] = []
        for message in received:
            if message.key == f"k{k}" and message.payload not in firsts:
                firsts.append(message.payload)
        assert firsts == [b"%d" % n for n in range(10)]


async def test_broker_outage_gives_retriable_failures_then_recovers(
    broker: BrokerServer, case: BrokerCase
) -> None:
    url = broker.fresh_url()
    publisher = await connected_publisher(url)
    consumer = await connected_consumer(url)
    try:
        before = messages(10)
        assert all(o.acked for o in await publisher.publish(before))
        await consume(consumer, len(before))
        broker.stop()
        try:
            during = messages(10)
            started = time.monotonic()
            outcomes = await publisher.publish(during)
            assert time.monotonic() - started < 60  # a hang guard, not a performance figure
            assert not any(o.acked for o in outcomes)
            assert all(o.retriable for o in outcomes)
        finally:
            broker.start()
        await publish_until_acked(publisher, during)
        received = await consume(consumer, len(during), within=90)
        assert {m.message_id for m in during} <= {m.message_id for m in received}
    finally:
        await consumer.close()
        await publisher.close()


async def test_oversize_message_is_rejected_not_retried(broker: BrokerServer) -> None:
    publisher = await connected_publisher(broker.fresh_url())
    try:
        limit = publisher.capabilities.max_message_bytes
        if limit is None:
            pytest.skip("this broker has no message size limit")
        batch = messages(3)
        big = Message(message_id=outbox.uuid7(), topic="conf.big", payload=b"x" * (limit + 1))
        outcomes = await publisher.publish([batch[0], big, batch[1]])
    finally:
        await publisher.close()
    assert outcomes[0].acked and outcomes[2].acked
    assert not outcomes[1].acked and not outcomes[1].retriable


async def test_duplicate_publish_has_one_inbox_effect(
    broker: BrokerServer, dsn: str, admin: Any
) -> None:
    admin.execute("CREATE TABLE effects (message_id uuid)")
    url = broker.fresh_url()
    ib = Inbox(consumer="conformance")

    @ib.handler(TOPIC_PATTERN)
    async def effect(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute("INSERT INTO effects VALUES (%s)", (message.message_id,))

    publisher = await connected_publisher(url)
    try:
        batch = messages(10)
        for _ in range(3):
            assert all(o.acked for o in await publisher.publish(batch))
    finally:
        await publisher.close()
    runner = ConsumerRunner(
        ib, ConsumerSettings(dsn=dsn, broker_url=url, prune_interval=0, fetch_wait=0.5)
    )
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: _count(dsn), within=60)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    rows = admin.execute("SELECT message_id, count(*) FROM effects GROUP BY 1").fetchall()
    assert len(rows) == 10 and all(n == 1 for _, n in rows)


async def test_relay_drains_a_backlog_into_the_broker(broker: BrokerServer, dsn: str) -> None:
    url = broker.fresh_url()
    with psycopg.connect(dsn) as conn:
        written = outbox.write_many(
            conn, [outbox.message("conf.created", {"n": n}, key=f"k{n % 7}") for n in range(300)]
        )
    relay = Relay(RelaySettings(dsn=dsn, broker_url=url, poll_interval=0.05, batch_size=100))
    consumer = await connected_consumer(url)
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        received = await consume(consumer, len(written), within=90)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
        await consumer.close()
    assert {m.message_id for m in written} == {m.message_id for m in received}


async def test_credentials_never_appear_in_errors_or_logs(
    case: BrokerCase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    publisher = None
    try:
        from outboxkit.brokers import create_publisher

        publisher = create_publisher(case.unreachable_url)
        await publisher.connect()
    except OutboxkitError as exc:
        errors.append(str(exc))
    if publisher is not None:
        outcomes = await publisher.publish(messages(2))
        errors += [o.error or "" for o in outcomes]
        await publisher.close()
    try:
        consumer = await connected_consumer(case.unreachable_url)
        await consumer.close()
    except OutboxkitError as exc:
        errors.append(str(exc))
    assert errors, "connecting to a closed port should fail"
    assert not any(SECRET in text for text in errors), errors
    assert SECRET not in caplog.text


async def _count(dsn: str) -> bool:
    def read() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(DISTINCT message_id) FROM effects").fetchone()
            return bool(row and row[0] == 10)

    return await asyncio.to_thread(read)

"""Publishing and consuming through the real adapters, with hang guards."""

from __future__ import annotations

import time
import uuid

from outboxkit.brokers import Consumer, Publisher, Subscription, create_consumer, create_publisher
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, Message

TOPIC_PATTERN = "conf.*"


def messages(count: int, *, keys: int = 5, topic: str = "conf.created") -> list[Message]:
    """JSON and bytes payloads, keyed and keyless, with and without user headers."""
    batch = []
    for i in range(count):
        binary = i % 4 == 3
        batch.append(
            Message(
                message_id=uuid7(),
                topic=topic if i % 2 else "conf.updated",
                payload=bytes([i % 256, 0, 255, 10]) if binary else b'{"n":%d,"s":"\xc3\xa9"}' % i,
                key=None if i % 5 == 4 else f"key-{i % keys}",
                headers={} if i % 3 == 0 else {"x-n": str(i), "traceparent": f"00-{i:032x}-01"},
                content_type=BYTES_CONTENT_TYPE if binary else "application/json",
            )
        )
    return batch


async def connected_publisher(url: str) -> Publisher:
    publisher = create_publisher(url)
    await publisher.connect()
    return publisher


async def connected_consumer(url: str, name: str | None = None) -> Consumer:
    consumer = create_consumer(
        url, Subscription(name or f"c{uuid.uuid4().hex[:8]}", [TOPIC_PATTERN])
    )
    assert consumer is not None
    await consumer.connect()
    return consumer


async def consume(consumer: Consumer, count: int, *, within: float = 60.0) -> list[Message]:
    """Fetch and ack until `count` messages arrived (more may arrive: duplicates)."""
    received: list[Message] = []
    deadline = time.monotonic() + within
    while len({m.message_id for m in received}) < count:
        assert time.monotonic() < deadline, f"received {len(received)} of {count}"
        for delivery in await consumer.fetch(100, 1.0):
            assert delivery.message is not None, delivery.malformed
            received.append(delivery.message)
            await delivery.ack()
    return received

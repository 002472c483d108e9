"""JetStream from the test's side: publish (the real publisher, or raw), read consumer state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import nats
from nats.js.api import ConsumerInfo

from outboxkit.brokers import create_publisher
from outboxkit.outbox.message import Message


async def publish(url: str, messages: Sequence[Message], *, within: float = 30.0) -> None:
    """Publish `messages` with the real publisher, retrying until all are acked (hang guard)."""
    publisher = create_publisher(url)
    deadline = time.monotonic() + within
    try:
        pending = list(messages)
        while pending:
            outcomes = await publisher.publish(pending)
            pending = [m for m, o in zip(pending, outcomes, strict=True) if not o.acked]
            assert all(o.retriable for o in outcomes), outcomes
            if pending:
                assert time.monotonic() < deadline, outcomes[0]
                await asyncio.sleep(0.2)
    finally:
        await publisher.close()


async def publish_raw(
    server_url: str, subject: str, payload: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """One message straight through nats-py (no envelope unless `headers` carries one)."""
    nc = await nats.connect(server_url)
    try:
        await nc.jetstream().publish(subject, payload, headers=dict(headers) if headers else None)
    finally:
        await nc.close()


async def consumer_info(server_url: str, stream: str, durable: str) -> ConsumerInfo:
    """The server's view of a durable consumer: delivered, ack pending, pending, config."""
    nc = await nats.connect(server_url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(stream, durable)
        return info
    finally:
        await nc.close()


def deliveries(info: ConsumerInfo) -> int:
    """How many deliveries the consumer made so far, redeliveries included."""
    assert info.delivered is not None
    return info.delivered.consumer_seq

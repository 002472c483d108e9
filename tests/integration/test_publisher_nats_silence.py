"""The NATS publisher when the broker goes silent (blackholed or partitioned connection).

The client cannot tell a silent connection from a healthy one until PINGs go unanswered
(minutes with nats-py's defaults), so every PubAck just times out. That must not count as a
failure of the messages (attempts, then dead letters): it is an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from outboxkit.brokers.nats.publisher import NatsPublisher, create
from outboxkit.devservers import NatsServer
from outboxkit.faults.proxy import FaultProxy
from outboxkit.outbox.message import BYTES_CONTENT_TYPE
from tests.integration.brokers import sample_messages, unique_stream
from tests.support.publishers import publish_until_acked


@pytest.fixture
async def proxy(nats_server: NatsServer) -> AsyncIterator[FaultProxy]:
    fault = await FaultProxy(nats_server.port).start()
    yield fault
    await fault.close()


async def publisher_via(proxy: FaultProxy) -> NatsPublisher:
    stream = unique_stream()
    url = (
        f"nats://127.0.0.1:{proxy.port}?stream={stream}&subject_prefix={stream.lower()}."
        "&timeout=1&connect_timeout=1"
    )
    publisher = create(url)
    await publisher.connect()
    return publisher


async def test_a_blackholed_broker_is_unreachable_not_a_message_failure(
    proxy: FaultProxy,
) -> None:
    publisher = await publisher_via(proxy)
    try:
        assert all(o.acked for o in await publisher.publish(sample_messages(3)))
        await proxy.set_mode("blackhole")
        started = time.monotonic()
        outcomes = await publisher.publish(sample_messages(3))
        assert all(o.unavailable for o in outcomes), outcomes
        assert "PING" in (outcomes[0].error or "")
        # The silent connection was dropped: the next batch tries a fresh one, which
        # times out connecting, and is unreachable too.
        outcomes = await publisher.publish(sample_messages(2))
        assert all(o.unavailable for o in outcomes), outcomes
        assert time.monotonic() - started < 30  # a hang guard, not a performance figure
        await proxy.set_mode("pass")
        await publish_until_acked(publisher, sample_messages(3))  # a fresh connection
    finally:
        await publisher.close()


async def test_a_broker_that_stops_reading_mid_batch_does_not_hang_the_publisher(
    proxy: FaultProxy,
) -> None:
    """A batch bigger than nats-py's pending buffer makes it flush inline, and that flush
    swallows the cancellation of a timeout around it: the PubAck wait must not rely on it."""
    publisher = await publisher_via(proxy)
    try:
        assert all(o.acked for o in await publisher.publish(sample_messages(3)))
        await proxy.set_mode("stall")
        big = [
            replace(m, payload=b"x" * 400_000, content_type=BYTES_CONTENT_TYPE)
            for m in sample_messages(40)
        ]
        publishing = asyncio.ensure_future(publisher.publish(big))
        done, _ = await asyncio.wait({publishing}, timeout=60)  # never cancels the publish
        assert done, "publish hung on a broker that stopped reading"
        assert not any(o.acked for o in publishing.result())
        await proxy.set_mode("pass")
        outcomes = await publisher.publish(sample_messages(3))
        if not all(o.acked for o in outcomes):  # the stalled connection may be dropped first
            outcomes = await publisher.publish(sample_messages(3))
        assert all(o.acked for o in outcomes), outcomes
    finally:
        await publisher.close()

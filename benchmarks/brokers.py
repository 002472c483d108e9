"""The brokers a relay benchmark can run against, chosen by URL.

Each target tells the harness the relay's `--broker` URL for one run, how many messages a run
has delivered so far (progress), and the broker's own raw publish rate from Python with the
same batch size (the reference P). NATS JetStream is always there (embedded); an `amqp://`
URL given with `--broker` adds RabbitMQ once `brokers/rabbitmq/publisher.py` exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import nats
import nats.js.errors
from nats.js.api import StorageType, StreamConfig

from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message

MSG_ID = "Nats-Msg-Id"


def sample_messages(count: int, topic: str) -> list[Message]:
    """Messages like the backlog's rows (same payload size, keys and topic)."""
    created = datetime.now(UTC)
    return [
        Message(
            message_id=uuid7(),
            topic=topic,
            payload=b'{"order_id":%d,"total":%d,"note":"%s"}' % (i, (i * 7) % 1000, b"x" * 120),
            key=f"key-{i % 1000}",
            created_at=created,
        )
        for i in range(count)
    ]


class BrokerTarget(Protocol):
    """One broker the relay benchmarks publish to."""

    name: str

    def relay_url(self, tag: str) -> str:
        """The relay's `--broker` URL for run `tag` (each run gets its own stream/queue)."""

    async def prepare(self, tag: str) -> None:
        """Make what run `tag` needs on the broker before the relay starts."""

    async def delivered(self, tag: str) -> int | None:
        """Messages the broker holds for run `tag`; None: unknown (count the outbox)."""

    async def raw_publish_rate(self, messages: Sequence[Message], batch: int) -> float:
        """Messages/s publishing `messages` in batches of `batch`, awaiting every confirm."""

    async def cleanup(self, tag: str) -> None:
        """Forget run `tag`'s stream/queue."""

    async def close(self) -> None: ...


class NatsTarget:
    """NATS JetStream: one file-backed stream per run, as the relay would create it."""

    name = "NATS JetStream"

    def __init__(self, url: str) -> None:
        self.url = url
        self._nc: Any = None

    @staticmethod
    def stream(tag: str) -> str:
        return f"BENCH_{tag}".upper()

    @staticmethod
    def prefix(tag: str) -> str:
        return f"bench_{tag}.".lower()

    def relay_url(self, tag: str) -> str:
        return f"{self.url}?stream={self.stream(tag)}&subject_prefix={self.prefix(tag)}"

    async def prepare(self, tag: str) -> None:
        return None  # the relay creates its stream

    async def _js(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(self.url, name="outboxkit-bench")
        return self._nc.jetstream(timeout=30)

    async def delivered(self, tag: str) -> int | None:
        js = await self._js()
        try:
            info = await js.stream_info(self.stream(tag))
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)

    async def raw_publish_rate(self, messages: Sequence[Message], batch: int) -> float:
        """The faster of two raw nats-py ways to publish a batch and await its PubAcks."""
        js = await self._js()
        tag = f"raw{uuid7().hex[:8]}"
        stream, prefix = self.stream(tag), self.prefix(tag)
        await js.add_stream(
            StreamConfig(name=stream, subjects=[prefix + ">"], storage=StorageType.FILE)
        )
        # Subjects and headers exactly as the relay builds them, built before the clock runs.
        prepared = []
        for message in messages:
            headers = to_headers(message)
            headers[MSG_ID] = str(message.message_id)
            prepared.append((prefix + message.topic, message.payload, headers))
        try:
            half = len(prepared) // 2  # each way publishes its own half: no duplicates
            rates = [
                await self._publish_async_rate(js, prepared[:half], batch),
                await self._reply_pipelined_rate(prepared[half:], batch),
            ]
        finally:
            await js.delete_stream(stream)
        return max(rates)

    @staticmethod
    async def _publish_async_rate(js: Any, prepared: list[Any], batch: int) -> float:
        """nats-py's own batched API: `publish_async` a batch, then gather its PubAcks."""
        started = time.perf_counter()
        for first in range(0, len(prepared), batch):
            futures = [
                await js.publish_async(subject, payload, headers=headers)
                for subject, payload, headers in prepared[first : first + batch]
            ]
            await asyncio.gather(*futures)
        return len(prepared) / (time.perf_counter() - started)

    async def _reply_pipelined_rate(self, prepared: list[Any], batch: int) -> float:
        """Plain PUBs with a reply subject each under one subscription; a batch waits for
        as many replies as it sent. The cheapest confirmed publish nats-py allows."""
        nc = self._nc
        inbox = nc.new_inbox()
        replies = 0
        enough = asyncio.Event()
        wanted = 0

        async def on_reply(_: Any) -> None:
            nonlocal replies
            replies += 1
            if replies >= wanted:
                enough.set()

        subscription = await nc.subscribe(inbox + ".*", cb=on_reply)
        try:
            started = time.perf_counter()
            for first in range(0, len(prepared), batch):
                chunk = prepared[first : first + batch]
                wanted, replies = len(chunk), 0
                enough.clear()
                for n, (subject, payload, headers) in enumerate(chunk):
                    await nc.publish(subject, payload, f"{inbox}.{first + n}", headers)
                await asyncio.wait_for(enough.wait(), 30)
            return len(prepared) / (time.perf_counter() - started)
        finally:
            await subscription.unsubscribe()

    async def cleanup(self, tag: str) -> None:
        js = await self._js()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(self.stream(tag))

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        self._nc = None


class AmqpTarget:
    """RabbitMQ (publisher confirms): per run a topic exchange and one queue bound to `#`.

    The relay declares its exchange (`?exchange=`); the harness binds a durable queue to it
    so that every message is routable, and counts that queue for progress.
    """

    name = "RabbitMQ"

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None

    @staticmethod
    def exchange(tag: str) -> str:
        return f"bench_{tag}".lower()

    def relay_url(self, tag: str) -> str:
        joiner = "&" if urlsplit(self.url).query else "?"
        return f"{self.url}{joiner}exchange={self.exchange(tag)}"

    async def _channel(self) -> Any:
        import aio_pika

        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect(_plain_url(self.url))
        return await self._connection.channel()

    async def prepare(self, tag: str) -> None:
        import aio_pika

        channel = await self._channel()
        try:
            exchange = await channel.declare_exchange(
                self.exchange(tag), aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.exchange(tag), durable=True)
            await queue.bind(exchange, routing_key="#")
        finally:
            await channel.close()

    async def delivered(self, tag: str) -> int | None:
        channel = await self._channel()
        try:
            queue = await channel.declare_queue(self.exchange(tag), passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def raw_publish_rate(self, messages: Sequence[Message], batch: int) -> float:
        """aio-pika with publisher confirms: publish a batch concurrently, await confirms."""
        import aio_pika

        channel = await self._channel()
        name = f"bench_raw{uuid7().hex[:8]}"
        try:
            exchange = await channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind(exchange, routing_key="#")
            prepared = [
                aio_pika.Message(
                    m.payload,
                    headers=dict(to_headers(m)),
                    message_id=str(m.message_id),
                    content_type=m.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                for m in messages
            ]
            started = time.perf_counter()
            for first in range(0, len(prepared), batch):
                await asyncio.gather(
                    *(
                        exchange.publish(m, routing_key=messages[first + i].topic, mandatory=True)
                        for i, m in enumerate(prepared[first : first + batch])
                    )
                )
            elapsed = time.perf_counter() - started
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
        finally:
            await channel.close()
        return len(prepared) / elapsed

    async def cleanup(self, tag: str) -> None:
        channel = await self._channel()
        try:
            await channel.queue_delete(self.exchange(tag))
            await channel.exchange_delete(self.exchange(tag))
        finally:
            await channel.close()

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = None


def _plain_url(url: str) -> str:
    """The URL without outboxkit's query options (aio-pika would read some of them)."""
    return url.split("?", 1)[0]


def targets(nats_url: str, amqp_urls: Sequence[str]) -> tuple[list[BrokerTarget], list[str]]:
    """The targets to benchmark, and notes on the brokers left out (and why)."""
    found: list[BrokerTarget] = [NatsTarget(nats_url)]
    notes: list[str] = []
    for url in amqp_urls:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in {"amqp", "amqps"}:
            notes.append(f"{scheme}:// left out: the harness has no target for it yet.")
        elif importlib.util.find_spec("outboxkit.brokers.rabbitmq.publisher") is None:
            notes.append("RabbitMQ left out: brokers/rabbitmq/publisher.py does not exist.")
        else:
            found.append(AmqpTarget(url))
    if (
        not amqp_urls
        and importlib.util.find_spec("outboxkit.brokers.rabbitmq.publisher") is not None
    ):
        notes.append("RabbitMQ not run: add `--broker rabbitmq` (embedded) or an amqp:// URL.")
    return found, notes

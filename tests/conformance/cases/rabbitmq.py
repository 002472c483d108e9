"""RabbitMQ from Debian's rabbitmq-server package, one node for the session.

RabbitMQ keeps a message only if a queue is bound for it when it is published (our
publisher rejects an unroutable message, as it must). The suite publishes before some of
its consumers exist, so `fresh_url()` creates the test's exchange and queue up front, bound
with `#`, and names that queue in the URL (`queue=`): every consumer of the URL reads it.
The URL also states the node's `max_message_size` (16 MiB), so the size limit the suite
checks is the server's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping

import aio_pika
from aio_pika.abc import AbstractExchange

from outboxkit.brokers.rabbitmq.options import parse_url
from outboxkit.brokers.rabbitmq.publisher import open_connection
from outboxkit.devservers.rabbitmq import MAX_MESSAGE_BYTES, RabbitMQServer
from tests.conformance.cases.base import BrokerCase, RawSender
from tests.support.malformed import RAW_TOPIC


async def declare_bound_queue(url: str, exchange: str, queue: str) -> None:
    """A durable topic exchange and a durable queue bound to it with `#`."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        bound = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(bound, "#")
    finally:
        await connection.close()


def run_sync(url: str, exchange: str, queue: str) -> None:
    """`declare_bound_queue` from synchronous code, even inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, declare_bound_queue(url, exchange, queue)).result(60)


class Server:
    def __init__(self) -> None:
        self.rabbitmq = RabbitMQServer()

    def fresh_url(self) -> str:
        tag = f"c{uuid.uuid4().hex[:10]}"
        run_sync(self.rabbitmq.url, tag, tag)
        return (
            f"{self.rabbitmq.url}?exchange={tag}&queue={tag}&reconnect_wait=0.5"
            f"&max_message_bytes={MAX_MESSAGE_BYTES}"  # the node's max_message_size
        )

    def stop(self) -> None:
        self.rabbitmq.stop()

    def start(self) -> None:
        self.rabbitmq.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.rabbitmq.cleanup()


class Raw:
    def __init__(self, exchange: AbstractExchange) -> None:
        self.exchange = exchange

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        # Bytes go as an AMQP byte array (pamqp encodes bytearray), text as a long string.
        headers = {k: bytearray(v) if isinstance(v, bytes) else v for k, v in fields.items()}
        message = aio_pika.Message(payload, headers=headers)
        await self.exchange.publish(message, routing_key=RAW_TOPIC)


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    connection = await open_connection(options, "conformance-raw")
    try:
        channel = await connection.channel(publisher_confirms=True)
        yield Raw(await channel.get_exchange(options.exchange))
    finally:
        await connection.close()


CASE = BrokerCase(
    name="rabbitmq",
    server=server,
    unreachable_url="amqp://u:s3cr3t-pw@127.0.0.1:9/?timeout=1&connect_timeout=1",
    raw=raw,
    # A table's field names are short strings; aiormq gives every message an AMQP id.
    raw_cannot=frozenset({"long names", "no native id"}),
)

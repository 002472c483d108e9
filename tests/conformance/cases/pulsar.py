"""Pulsar through pulsar-lite, a Pulsar-protocol broker from the pulsar-lite wheel.

The Pulsar adapter is verified against pulsar-lite (a Pulsar-protocol broker), not Apache
Pulsar. pulsar-lite keeps its store on disk: a restart keeps topics, messages and cursors.
It cannot list a namespace's topics, so the suite's wildcard handler pattern (`conf.*`) is
served through one Pulsar topic per URL (`topic=`), the consumer filtering on the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping

import pulsar

from outboxkit.brokers.pulsar.options import parse_url
from outboxkit.devservers.pulsar import PulsarLiteServer
from tests.conformance.cases.base import BrokerCase, RawSender
from tests.support.malformed import RAW_TOPIC, as_text


class Server:
    def __init__(self) -> None:
        self.pulsar = PulsarLiteServer()

    def fresh_url(self) -> str:
        tag = uuid.uuid4().hex[:10]
        return f"{self.pulsar.url}?topic=c{tag}&timeout=5&connect_timeout=2"

    def stop(self) -> None:
        self.pulsar.stop()

    def start(self) -> None:
        self.pulsar.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.pulsar.cleanup()


class Raw:
    def __init__(self, producer: pulsar.Producer) -> None:
        self.producer = producer

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        await asyncio.to_thread(self.producer.send, payload, properties=as_text(fields))


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    client = pulsar.Client(options.service_url)
    try:
        producer = await asyncio.to_thread(
            client.create_producer, options.pulsar_topic(RAW_TOPIC), batching_enabled=False
        )
        yield Raw(producer)
    finally:
        await asyncio.to_thread(client.close)


CASE = BrokerCase(
    name="pulsar",
    server=server,
    unreachable_url="pulsar://u:s3cr3t-pw@127.0.0.1:9?timeout=2&connect_timeout=1",
    raw=raw,
    raw_text_only=True,  # properties are UTF-8 strings
)

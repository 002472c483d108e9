"""Amazon SQS, as moto's stand-alone server (in memory: a restart loses every queue).

Standard queues here (the default): the order test skips, as standard queues promise no
order. tests/integration/test_sqs.py runs the order, outage and round-trip tests of this
suite again against FIFO queues.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from aiobotocore.session import get_session

from outboxkit.brokers.sqs.options import ATTRIBUTE, parse_url
from outboxkit.devservers.sqs import SqsServer
from tests.conformance.cases.base import BrokerCase, RawSender
from tests.support.malformed import as_text


class Server:
    def __init__(self, **options: object) -> None:
        self.sqs = SqsServer()
        self.options = options

    def fresh_url(self) -> str:
        queue = f"c{uuid.uuid4().hex[:12]}"
        return self.sqs.url(queue=queue, visibility=10, timeout=5, **self.options)

    def stop(self) -> None:
        self.sqs.stop()

    def start(self) -> None:
        self.sqs.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.sqs.cleanup()


class Raw:
    def __init__(self, client: Any, queue_url: str) -> None:
        self.client, self.queue_url = client, queue_url

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        # The envelope attribute is JSON: bytes that are not UTF-8 travel as escaped lone
        # surrogates, NUL as \u0000 (SQS itself refuses both in attribute text).
        envelope = {"v": 1, "body": "text", "headers": as_text(fields)}
        await self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=payload.decode(),
            MessageAttributes={
                ATTRIBUTE: {"DataType": "String", "StringValue": json.dumps(envelope)}
            },
        )


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    async with get_session().create_client("sqs", **options.client_kwargs()) as client:
        queue_url = (await client.get_queue_url(QueueName=options.queue))["QueueUrl"]
        yield Raw(client, queue_url)


CASE = BrokerCase(
    name="sqs",
    server=server,
    unreachable_url="sqs://u:s3cr3t-pw@127.0.0.1:9?region=us-east-1&tls=false&timeout=1",
    keeps_messages_across_restart=False,
    raw=raw,
)

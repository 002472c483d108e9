"""Amazon SQS, as moto's stand-alone server (in memory: a restart loses every queue).

Standard queues here (the default): the order test skips, as standard queues promise no
order. tests/integration/test_sqs.py runs the order, outage and round-trip tests of this
suite again against FIFO queues.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from outboxkit.devservers.sqs import SqsServer
from tests.conformance.cases.base import BrokerCase


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


CASE = BrokerCase(
    name="sqs",
    server=server,
    unreachable_url="sqs://u:s3cr3t-pw@127.0.0.1:9?region=us-east-1&tls=false&timeout=1",
    keeps_messages_across_restart=False,
)

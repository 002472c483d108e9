"""Redis Streams from Debian's redis-server (AOF on, a password, 16 MiB bulk strings)."""

from __future__ import annotations

from outboxkit.devservers.redis import RedisServer
from tests.conformance.cases.base import BrokerCase, wrapped

CASE = BrokerCase(
    name="redis",
    server=wrapped(RedisServer, lambda s, tag: f"{s.url}?stream=conf-{tag}&claim_idle=2"),
    unreachable_url="redis://u:s3cr3t-pw@127.0.0.1:9?timeout=1&connect_timeout=1",
)

"""Redis Streams from Debian's redis-server (AOF on, a password, 16 MiB bulk strings)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import redis.asyncio

from outboxkit.brokers.redis.options import PAYLOAD_FIELD, parse_url
from outboxkit.devservers.redis import RedisServer
from tests.conformance.cases.base import BrokerCase, RawSender, wrapped
from tests.support.malformed import RAW_TOPIC


class Raw:
    def __init__(self, client: redis.asyncio.Redis, stream: str) -> None:
        self.client, self.stream = client, stream

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        entry: dict[bytes, bytes] = {
            k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()
        }
        await self.client.xadd(self.stream, {**entry, PAYLOAD_FIELD.encode(): payload})


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    client = redis.asyncio.Redis(**options.client_kwargs())
    try:
        yield Raw(client, options.stream_for(RAW_TOPIC))
    finally:
        await client.aclose()


CASE = BrokerCase(
    name="redis",
    server=wrapped(RedisServer, lambda s, tag: f"{s.url}?stream=conf-{tag}&claim_idle=2"),
    unreachable_url="redis://u:s3cr3t-pw@127.0.0.1:9?timeout=1&connect_timeout=1",
    raw=raw,
)
